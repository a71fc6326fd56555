package docker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/berthhq/berth/common/spec"
)

// LogOptions say which of a container's log lines Logs reads.
type LogOptions struct {
	// Since, when set, skips the lines written before it.
	Since time.Time
	// Tail is how many of the last lines to read; negative: all. Docker
	// counts its messages: a line over 16 KiB is a message per 16 KiB,
	// so a tail may start inside one.
	Tail int
	// Follow keeps reading new lines until the container stops or ctx
	// ends.
	Follow bool
}

// LogLine is one line of a container's output.
type LogLine struct {
	// Time is when Docker received it.
	Time time.Time
	// Stderr is set for a line of standard error.
	Stderr bool
	// Text is the line without its newline; one longer than MaxLogLine
	// is cut there.
	Text string
}

// MaxLogLine is the longest line Logs hands on; the rest of a longer one
// is dropped.
const MaxLogLine = 64 << 10

// Logs reads a container's log lines, stdout and stderr apart (a line
// Docker split into 16 KiB messages is joined again), and calls
// emit with each in the order Docker sends them (the order it received
// them) until the log ends (without Follow), the container stops (with
// it), ctx ends, or emit fails, whose error Logs returns. Docker is
// always asked for timestamps. Containers Berth creates have no TTY, so
// their logs are multiplexed.
func (c *Client) Logs(ctx context.Context, id string, o LogOptions, emit func(LogLine) error) error {
	opts := client.ContainerLogsOptions{ShowStdout: true, ShowStderr: true, Timestamps: true, Follow: o.Follow, Tail: "all"}
	if o.Tail >= 0 {
		opts.Tail = strconv.Itoa(o.Tail)
	}
	if !o.Since.IsZero() {
		opts.Since = fmt.Sprintf("%d.%09d", o.Since.Unix(), o.Since.Nanosecond())
	}
	rc, err := c.c.ContainerLogs(ctx, id, opts)
	if err != nil {
		return fmt.Errorf("docker logs %s: %w", ShortID(id), notFound(err))
	}
	defer rc.Close()
	stop := context.AfterFunc(ctx, func() { _ = rc.Close() })
	defer stop()
	out, errw := &lineWriter{emit: emit}, &lineWriter{emit: emit, stderr: true}
	_, err = stdcopy.StdCopy(out, errw, rc)
	if err == nil {
		if err = out.flush(); err == nil {
			err = errw.flush()
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("docker logs %s: %w", ShortID(id), err)
	}
	return nil
}

// lineWriter cuts one stream into lines and emits each.
type lineWriter struct {
	emit   func(LogLine) error
	stderr bool
	buf    []byte
	cut    bool // the line in buf reached MaxLogLine: drop the rest
}

func (w *lineWriter) Write(p []byte) (int, error) {
	n := len(p)
	if len(w.buf) > 0 || w.cut {
		// Docker splits a line longer than 16 KiB into messages of their
		// own, each a frame with the line's timestamp: a frame that goes
		// on with a line is its next piece, and its timestamp goes.
		if stamp, _, ok := bytes.Cut(p[:min(len(p), maxStampLen+1)], []byte{' '}); ok && isStamp(stamp) {
			p = p[len(stamp)+1:]
		}
	}
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		chunk := p
		if i >= 0 {
			chunk = p[:i]
		}
		if !w.cut {
			room := maxStamped - len(w.buf)
			if len(chunk) > room {
				chunk, w.cut = chunk[:room], true
			}
			w.buf = append(w.buf, chunk...)
		}
		if i < 0 {
			break
		}
		p = p[i+1:]
		if err := w.flush(); err != nil {
			return 0, err
		}
	}
	return n, nil
}

// maxStampLen is the longest timestamp Docker writes
// (2026-12-06T09:15:11.272825259Z: RFC 3339 with nanoseconds, in UTC).
const maxStampLen = len("2006-01-02T15:04:05.000000000Z07:00")

// maxStamped is the longest line kept: its timestamp and MaxLogLine.
const maxStamped = maxStampLen + 1 + MaxLogLine

func isStamp(b []byte) bool {
	_, err := time.Parse(time.RFC3339Nano, string(b))
	return err == nil
}

// flush emits the line in buf, if any.
func (w *lineWriter) flush() error {
	if len(w.buf) == 0 && !w.cut {
		return nil
	}
	l := parseLine(w.buf)
	l.Stderr = w.stderr
	w.buf, w.cut = w.buf[:0], false
	return w.emit(l)
}

// parseLine splits "2026-12-06T08:57:08.123456789Z text" into its time
// and text; a line without a time keeps it zero.
func parseLine(b []byte) LogLine {
	stamp, text, ok := bytes.Cut(b, []byte{' '})
	if ok {
		if t, err := time.Parse(time.RFC3339Nano, string(stamp)); err == nil {
			return LogLine{Time: t, Text: cutLine(text)}
		}
	}
	return LogLine{Text: cutLine(b)}
}

func cutLine(b []byte) string {
	if len(b) > MaxLogLine {
		b = b[:MaxLogLine]
	}
	return string(b)
}

// logConfig is the json-file driver with l's limits, each zero field
// taken from the client's defaults.
func (c *Client) logConfig(l *spec.Logging) container.LogConfig {
	size, files := c.o.LogMaxSize, c.o.LogMaxFiles
	if l != nil && l.MaxSize != 0 {
		size = l.MaxSize
	}
	if l != nil && l.MaxFiles != 0 {
		files = l.MaxFiles
	}
	if size == 0 {
		size = spec.DefaultLogMaxSize
	}
	if files == 0 {
		files = spec.DefaultLogMaxFiles
	}
	return container.LogConfig{Type: "json-file", Config: map[string]string{
		"max-size": strconv.FormatInt(int64(size), 10), "max-file": strconv.Itoa(files)}}
}
