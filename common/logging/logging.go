// Package logging owns how Berth's daemons log: one zap constructor driven by
// --log-level and --log-format, and the field keys every package shares so
// that logs from the scheduler, healthd and lbagent can be joined.
package logging

import (
	"fmt"
	"io"
	"os"
	"strings"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Formats accepted by Options.Format.
const (
	FormatJSON    = "json"
	FormatConsole = "console"
)

// Field keys shared by every daemon. Use them with the typed zap fields:
// zap.String(logging.KeyApp, name).
const (
	KeyApp        = "app"
	KeyInstance   = "instance"
	KeyGeneration = "generation"
	KeyTerm       = "term"
	KeyNode       = "node"
	KeyChecker    = "checker"
	KeyRevision   = "revision"
	KeyContainer  = "container"
	KeyBucket     = "bucket"
	KeyKey        = "key"
	KeySubject    = "subject"
	KeyDuration   = "duration"
	KeyAttempt    = "attempt"
	KeyComponent  = "component"
)

// Options selects the level and the encoding of a logger.
type Options struct {
	// Level is debug, info, warn or error.
	Level string
	// Format is json (the default, for machines) or console (for people).
	Format string
	// Output is where log lines go; nil means standard output.
	Output io.Writer
}

// Validate reports a bad level or format, naming the flag and what is allowed.
func (o Options) Validate() error {
	if _, err := zapcore.ParseLevel(o.level()); err != nil {
		return fmt.Errorf("log level %q: must be one of debug, info, warn, error", o.Level)
	}
	switch o.format() {
	case FormatJSON, FormatConsole:
		return nil
	}
	return fmt.Errorf("log format %q: must be json or console", o.Format)
}

func (o Options) level() string {
	if o.Level == "" {
		return "info"
	}
	return strings.ToLower(o.Level)
}

func (o Options) format() string {
	if o.Format == "" {
		return FormatJSON
	}
	return strings.ToLower(o.Format)
}

// New builds a logger that writes one line per entry. Entries at the same
// level with the same message are sampled after the first 100 in a second,
// so a failure loop cannot flood the output. The logger never logs its own
// errors anywhere but standard error.
func New(o Options) (*zap.Logger, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	level, _ := zapcore.ParseLevel(o.level())
	encCfg := zap.NewProductionEncoderConfig()
	encCfg.TimeKey = "ts"
	encCfg.EncodeTime = zapcore.RFC3339NanoTimeEncoder
	encCfg.EncodeDuration = zapcore.StringDurationEncoder
	var enc zapcore.Encoder
	if o.format() == FormatConsole {
		encCfg.EncodeLevel = zapcore.CapitalLevelEncoder
		enc = zapcore.NewConsoleEncoder(encCfg)
	} else {
		enc = zapcore.NewJSONEncoder(encCfg)
	}
	out := o.Output
	if out == nil {
		out = os.Stdout
	}
	core := zapcore.NewCore(enc, zapcore.Lock(zapcore.AddSync(out)), zap.NewAtomicLevelAt(level))
	core = zapcore.NewSamplerWithOptions(core, 1e9, 100, 100) // per second: first 100, then every 100th
	return zap.New(core, zap.AddCaller(), zap.ErrorOutput(zapcore.Lock(os.Stderr))), nil
}
