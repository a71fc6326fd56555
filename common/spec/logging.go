package spec

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
)

// Bounds and defaults of the logging block, documented in docs/spec.md.
// The scheduler's --log-max-size and --log-max-files default to the
// defaults and must lie within the same bounds.
const (
	DefaultLogMaxSize  = LogSize(10 << 20)
	DefaultLogMaxFiles = 3
	MinLogMaxSize      = LogSize(1 << 20)
	MaxLogMaxSize      = LogSize(1 << 30)
	MinLogMaxFiles     = 1
	MaxLogMaxFiles     = 20
)

// Logging is the Docker log limits of an app's containers: the json-file
// driver keeps at most MaxFiles files of MaxSize each. A zero field is the
// scheduler's default (--log-max-size, --log-max-files).
type Logging struct {
	// MaxSize is the size at which a container's log file is rotated.
	MaxSize LogSize `json:"max_size,omitempty"`
	// MaxFiles is how many log files (the current one and its
	// rotations) are kept.
	MaxFiles int `json:"max_files,omitempty"`
}

// IsZero reports whether l sets nothing (nil or every field zero): the
// scheduler's defaults.
func (l *Logging) IsZero() bool { return l == nil || (l.MaxSize == 0 && l.MaxFiles == 0) }

func (l *Logging) validate(path string, es *Errors) {
	if l == nil {
		return
	}
	if l.MaxSize != 0 {
		es.Check(Join(path, "max_size"), CheckLogMaxSize(l.MaxSize))
	}
	if l.MaxFiles != 0 {
		es.Check(Join(path, "max_files"), CheckLogMaxFiles(l.MaxFiles))
	}
}

// CheckLogMaxSize checks a log file's rotation size against its bounds.
func CheckLogMaxSize(s LogSize) error {
	if s < MinLogMaxSize || s > MaxLogMaxSize {
		return fmt.Errorf("%q %s", s, logSizeHint)
	}
	return nil
}

// CheckLogMaxFiles checks a count of log files against its bounds.
func CheckLogMaxFiles(n int) error {
	if n < MinLogMaxFiles || n > MaxLogMaxFiles {
		return fmt.Errorf("(%d) must be from %d to %d", n, MinLogMaxFiles, MaxLogMaxFiles)
	}
	return nil
}

// LogSize is the size of a log file, written as Docker writes it: a
// number with k, m or g (powers of 1024), or any unit ByteSize takes.
type LogSize int64

// logSizeHint is what every bad log size is told.
var logSizeHint = fmt.Sprintf("must be a size such as 10m or 1g, from %s to %s", MinLogMaxSize, MaxLogMaxSize)

// ParseLogSize parses a log size such as "10m" or "1g".
func ParseLogSize(s string) (LogSize, error) {
	b, err := ParseByteSize(s)
	if err != nil {
		return 0, fmt.Errorf("%q %s", s, logSizeHint)
	}
	return LogSize(b), nil
}

// String writes s as Docker does: in g, m or k when one divides it, else
// in bytes.
func (s LogSize) String() string {
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"g", 1 << 30}, {"m", 1 << 20}, {"k", 1 << 10}} {
		if s != 0 && int64(s)%u.mult == 0 {
			return strconv.FormatInt(int64(s)/u.mult, 10) + u.suffix
		}
	}
	return strconv.FormatInt(int64(s), 10)
}

// MarshalJSON writes s as a size string.
func (s LogSize) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }

// UnmarshalJSON reads a size string or a plain number of bytes.
func (s *LogSize) UnmarshalJSON(data []byte) error {
	var str string
	if err := json.Unmarshal(data, &str); err != nil {
		var n json.Number
		if err := json.Unmarshal(data, &n); err != nil {
			return errors.New(logSizeHint)
		}
		str = n.String()
	}
	v, err := ParseLogSize(str)
	if err != nil {
		return err
	}
	*s = v
	return nil
}
