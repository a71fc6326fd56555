package logs

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/docker"
	"github.com/berthhq/berth/scheduler/internal/fleet"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// Instances reads an app's instance records. Called concurrently.
type Instances interface {
	Instances(ctx context.Context, app string) ([]store.Instance, error)
}

// Engines reads a container's log from the engine of the host that runs
// it (fleet.Fleet); an error wrapping fleet.ErrHostDown is a host that is
// down or does not answer. Called concurrently, once per instance.
type Engines interface {
	Logs(ctx context.Context, host, id string, o docker.LogOptions, emit func(docker.LogLine) error) error
}

var (
	_ Instances = (*store.Store)(nil)
	_ Engines   = (*fleet.Fleet)(nil)
)

// Reader reads apps' logs. Its zero durations and caps are the defaults;
// it is safe for concurrent use.
type Reader struct {
	Instances Instances
	Engines   Engines
	// Poll is how often a follow reads the instance records again, to
	// attach to new instances (default 1s).
	Poll time.Duration
	// MaxLines and MaxBytes cap a request without follow (default
	// MaxLines, MaxBytes).
	MaxLines, MaxBytes int
	// Now is the clock of notes (default time.Now).
	Now func() time.Time
}

// Line is one line of an app's log: its time, the instance it came from
// as the prefix shows it, and its text.
type Line struct {
	Time   time.Time
	Source string
	Text   string
}

// Append writes l as one line of the stream: "web-3f2a | text", with
// its time in front when timestamps is set.
func (l Line) Append(b []byte, timestamps bool) []byte {
	if timestamps {
		b = l.Time.UTC().AppendFormat(b, time.RFC3339Nano)
		b = append(b, ' ')
	}
	b = append(b, l.Source...)
	b = append(b, " | "...)
	b = append(b, l.Text...)
	return append(b, '\n')
}

// ErrCapped ends a request without follow that reached MaxLines or
// MaxBytes.
var ErrCapped = errors.New("logs: the request's cap was reached")

// Stream writes app's log lines to w as req asks, calling flush whenever
// nothing more is ready to write. Without follow, each instance's lines
// are read at once and merged in time order, and the stream ends after
// the last (or at the request's cap, with a line that says so). With
// follow, lines are written in the order they arrive (each instance's in
// its own order; instances interleave as their lines come, not by their
// times) and the stream goes on, attaching to the instances a rollout
// starts, until ctx ends. An instance whose host is down says so in one
// line. An error before anything was written is spec.Errors when the
// request names no instance of the app.
func (r *Reader) Stream(ctx context.Context, app string, req Request, w io.Writer, flush func() error) error {
	insts, err := r.Instances.Instances(ctx, app)
	if err != nil {
		return err
	}
	p := newPrefixes(only(insts, "")) // the app's hosts, whichever instance is read
	insts = only(insts, req.Instance)
	if req.Instance != "" && len(insts) == 0 {
		return spec.Errors{{Path: "instance", Message: fmt.Sprintf("%q is not an instance of %s (scheduler status %s lists them)", req.Instance, app, app)}}
	}
	bw := bufio.NewWriterSize(w, 32<<10)
	out := &writer{w: bw, timestamps: req.Timestamps}
	if req.Follow {
		err = r.follow(ctx, app, req, insts, p, out, func() error {
			if err := bw.Flush(); err != nil {
				return err
			}
			return flush()
		})
	} else {
		out.maxLines, out.maxBytes = r.MaxLines, r.MaxBytes
		if out.maxLines <= 0 {
			out.maxLines = MaxLines
		}
		if out.maxBytes <= 0 {
			out.maxBytes = MaxBytes
		}
		err = r.merged(ctx, req, insts, p, out)
	}
	if errors.Is(err, ErrCapped) {
		_, err = fmt.Fprintf(bw, "(stopped after %d lines, %d bytes: the cap of a read without --follow; narrow it with --since, --tail or --instance)\n",
			out.lines, out.bytes)
	}
	if err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	return flush()
}

// only keeps the instances that have a container, and only id's when set.
func only(insts []store.Instance, id string) []store.Instance {
	var out []store.Instance
	for _, i := range insts {
		if i.ContainerID != "" && (id == "" || i.ID == id) {
			out = append(out, i)
		}
	}
	return out
}

// writer writes lines within its caps (none when zero).
type writer struct {
	w                  io.Writer
	timestamps         bool
	buf                []byte
	lines, bytes       int
	maxLines, maxBytes int
}

func (o *writer) write(l Line) error {
	o.buf = l.Append(o.buf[:0], o.timestamps)
	if (o.maxLines > 0 && o.lines+1 > o.maxLines) || (o.maxBytes > 0 && o.bytes+len(o.buf) > o.maxBytes) {
		return ErrCapped
	}
	if _, err := o.w.Write(o.buf); err != nil {
		return err
	}
	o.lines++
	o.bytes += len(o.buf)
	return nil
}

// prefixes names each instance in the stream: its id, or host/id once
// the app has instances on several hosts ("local" for the scheduler's own
// engine).
type prefixes struct {
	hosts map[string]bool
}

func newPrefixes(insts []store.Instance) *prefixes {
	p := &prefixes{hosts: map[string]bool{}}
	for _, i := range insts {
		p.hosts[i.Host] = true
	}
	return p
}

func (p *prefixes) of(i store.Instance) string {
	p.hosts[i.Host] = true
	if len(p.hosts) < 2 {
		return i.ID
	}
	host := i.Host
	if host == "" {
		host = "local"
	}
	return host + "/" + i.ID
}

// read reads one instance's log, sending each line. It returns the time
// of the last line read (zero: none) and, when its host is down or its
// engine fails, the note that says so.
func (r *Reader) read(ctx context.Context, i store.Instance, source string, o docker.LogOptions, send func(Line) bool) (time.Time, string) {
	var last time.Time
	err := r.Engines.Logs(ctx, i.Host, i.ContainerID, o, func(dl docker.LogLine) error {
		last = dl.Time
		if !send(Line{Time: dl.Time, Source: source, Text: dl.Text}) {
			return ctx.Err()
		}
		return nil
	})
	if err == nil || ctx.Err() != nil {
		return last, ""
	}
	return last, Note(err)
}

// Note is the line that stands for an instance's log that cannot be read.
func Note(err error) string {
	switch {
	case errors.Is(err, fleet.ErrHostDown):
		// "fleet: the host is not up: host h2 is down" → "host h2 is down"
		s := err.Error()
		if i := strings.LastIndex(s, ": "); i >= 0 {
			s = s[i+2:]
		}
		return "(" + s + ": no logs)"
	case errors.Is(err, docker.ErrNotFound):
		return "(its container is gone: no logs)"
	}
	return fmt.Sprintf("(cannot read its logs: %s)", msg.Truncate(err.Error(), 300))
}

func (r *Reader) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// merged reads every instance at once and writes their lines merged in
// time order.
func (r *Reader) merged(ctx context.Context, req Request, insts []store.Instance, p *prefixes, out *writer) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	srcs := make([]<-chan Line, len(insts))
	for n, i := range insts {
		ch := make(chan Line, 256)
		srcs[n] = ch
		source := p.of(i)
		go func() {
			defer close(ch)
			send := func(l Line) bool {
				select {
				case ch <- l:
					return true
				case <-ctx.Done():
					return false
				}
			}
			if _, note := r.read(ctx, i, source, docker.LogOptions{Since: req.Since, Tail: req.Tail}, send); note != "" {
				send(Line{Time: r.now(), Source: source, Text: note})
			}
		}()
	}
	return Merge(srcs, out.write)
}

// Merge writes the lines of every source, each in time order, merged in
// time order (a k-way merge; a tie goes to the earlier source), until
// every source is closed or emit fails, whose error it returns.
func Merge(srcs []<-chan Line, emit func(Line) error) error {
	type head struct {
		l  Line
		ok bool
	}
	heads := make([]head, len(srcs))
	for n, ch := range srcs {
		heads[n].l, heads[n].ok = <-ch
	}
	for {
		best := -1
		for n, h := range heads {
			if h.ok && (best < 0 || h.l.Time.Before(heads[best].l.Time)) {
				best = n
			}
		}
		if best < 0 {
			return nil
		}
		if err := emit(heads[best].l); err != nil {
			return err
		}
		heads[best].l, heads[best].ok = <-srcs[best]
	}
}

// followed is an instance a follow reads, and where it got to.
type followed struct {
	source  string
	reading bool
	last    time.Time
	note    string // the last note written: a note is not repeated
}

// ended is a follow's read of one container that ended.
type ended struct {
	container string
	last      time.Time
	note      string
}

// follower is one follow's state, owned by its loop.
type follower struct {
	r     *Reader
	req   Request
	p     *prefixes
	out   *writer
	flush func() error
	lines chan Line
	ends  chan ended
	seen  map[string]*followed // by container id
}

// follow writes lines as they come, attaching to new instances at each
// poll, and to an instance again whose read ended while its record says
// it runs (its container was started again, or its host is back), from
// after its last line. A note (host down) is written once, not at every
// attempt.
func (r *Reader) follow(ctx context.Context, app string, req Request, insts []store.Instance, p *prefixes, out *writer, flush func() error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	f := &follower{r: r, req: req, p: p, out: out, flush: flush,
		lines: make(chan Line, 1024), ends: make(chan ended, 16), seen: map[string]*followed{}}
	f.attach(ctx, insts, true)
	if err := flush(); err != nil { // the headers go out before any line
		return nil
	}
	poll := r.Poll
	if poll <= 0 {
		poll = time.Second
	}
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case l := <-f.lines:
			if out.write(l) != nil {
				return nil // the client went away
			}
			if len(f.lines) == 0 && flush() != nil {
				return nil
			}
		case e := <-f.ends:
			if f.ended(e) != nil {
				return nil
			}
		case <-t.C:
			insts, err := r.Instances.Instances(ctx, app)
			if err == nil { // else: Postgres is away; the next poll tries again
				f.attach(ctx, insts, false)
			}
		}
	}
}

// attach starts reading each instance not read yet, or read before and
// live again.
func (f *follower) attach(ctx context.Context, insts []store.Instance, initial bool) {
	for _, i := range only(insts, f.req.Instance) {
		fi := f.seen[i.ContainerID]
		if fi != nil && (fi.reading || !live(i.State)) {
			continue
		}
		o := docker.LogOptions{Since: f.req.Since, Tail: f.req.Tail, Follow: true}
		if !initial {
			o.Tail = -1 // a new instance: all of it (it is new)
		}
		if fi != nil { // read again, from after its last line
			o.Tail = -1
			if !fi.last.IsZero() {
				o.Since = fi.last.Add(time.Nanosecond)
			}
		} else {
			fi = &followed{source: f.p.of(i)}
			f.seen[i.ContainerID] = fi
		}
		fi.reading = true
		source, send := fi.source, f.send(ctx)
		go func() {
			last, note := f.r.read(ctx, i, source, o, send)
			select {
			case f.ends <- ended{container: i.ContainerID, last: last, note: note}:
			case <-ctx.Done():
			}
		}()
	}
}

func (f *follower) send(ctx context.Context) func(Line) bool {
	return func(l Line) bool {
		select {
		case f.lines <- l:
			return true
		case <-ctx.Done():
			return false
		}
	}
}

// ended records where a read ended and writes its note, unless the last
// one said the same; an error is the client's.
func (f *follower) ended(e ended) error {
	fi := f.seen[e.container]
	if fi == nil {
		return nil
	}
	fi.reading = false
	if e.last.After(fi.last) {
		fi.last = e.last
	}
	defer func() { fi.note = e.note }()
	if e.note == "" || e.note == fi.note {
		return nil
	}
	if err := f.out.write(Line{Time: f.r.now(), Source: fi.source, Text: e.note}); err != nil {
		return err
	}
	return f.flush()
}

// live reports whether an instance in state may run its container: a
// follow reads it again when its read ended.
func live(state string) bool {
	switch state {
	case msg.StateCreating, msg.StateStarting, msg.StateRunning, msg.StateDraining:
		return true
	}
	return false
}
