// Package accesslog receives nginx's JSON access log on lbagent's unix
// datagram socket (nginx's syslog output, which never blocks nginx) and
// aggregates it per app per window: request count, status classes,
// upstream errors and upstream latency quantiles from a mergeable histogram
// (msg.Histogram, DDSketch's logarithmic bins at 1 % accuracy), which is
// published with them.
package accesslog

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/lbagent/internal/traffic"
)

// Entry is one request as nginx logged it.
type Entry struct {
	// App is the app the request was routed to; empty for unrouted requests.
	App string
	// Status is the response status.
	Status int
	// UpstreamMS is the total upstream response time in milliseconds, or -1
	// when no upstream answered (nginx returned the response itself).
	UpstreamMS float64
	// UpstreamError marks a 502, 503 or 504 produced while passing to an upstream.
	UpstreamError bool
	// RequestSeconds is nginx's $request_time: from the first byte read
	// from the client to the last byte sent; -1 when the line lacks it.
	RequestSeconds float64
	// ConnectErrors counts the upstream attempts of the request whose
	// connection failed: refused, unreachable, timed out, or no live
	// upstream server ($upstream_status 502 or 504 with
	// $upstream_connect_time "-"). A request retried on another instance
	// after a refused connection counts one here and its final status.
	ConnectErrors int
	// Upstreams, UpstreamStatuses and UpstreamConnects are nginx's
	// $upstream_addr, $upstream_status and $upstream_connect_time as
	// logged, one item per attempt; Attempts walks them.
	Upstreams, UpstreamStatuses, UpstreamConnects string
}

// Attempts calls fn for each upstream attempt of e: the address, and
// whether it failed (a 5xx answer, or a connection that failed: status
// 502 or 504 with no connect time). Items nginx did not fill ("-", or an
// upstream group's name when no server was live) come with their text;
// callers match addresses they know. It allocates nothing.
func (e *Entry) Attempts(fn func(addr string, failed bool)) {
	addrs, status, connect := e.Upstreams, e.UpstreamStatuses, e.UpstreamConnects
	for addrs != "" {
		var a, s, c string
		a, addrs = nextAddr(addrs)
		s, status = nextField(status)
		c, connect = nextField(connect)
		if a == "" {
			continue
		}
		failed := len(s) == 3 && s[0] == '5' || c == "-" && (s == "502" || s == "504")
		fn(a, failed)
	}
}

// Sink takes every parsed entry, on the receiver's goroutine, one at a
// time; it must be cheap, since it runs once per request nginx serves.
type Sink interface {
	Add(e Entry)
}

// Sinks is several sinks taking every entry in turn.
type Sinks []Sink

// Add hands e to each sink.
func (s Sinks) Add(e Entry) {
	for _, k := range s {
		k.Add(e)
	}
}

// line is the log_format berth_json of the shipped templates.
type line struct {
	App                  string          `json:"app"`
	Status               int             `json:"status"`
	Upstream             string          `json:"upstream"`
	UpstreamStatus       string          `json:"upstream_status"`
	UpstreamResponseTime string          `json:"upstream_response_time"`
	UpstreamConnectTime  string          `json:"upstream_connect_time"`
	RequestTime          json.RawMessage `json:"request_time"`
}

// Parse reads one datagram: an optional syslog header ("<190>Nov 24 00:45:21
// berth: "), then the JSON object.
func Parse(datagram []byte) (Entry, error) {
	i := bytes.IndexByte(datagram, '{')
	if i < 0 {
		return Entry{}, errors.New("access log: no JSON object")
	}
	var l line
	if err := json.Unmarshal(bytes.TrimSpace(datagram[i:]), &l); err != nil {
		return Entry{}, fmt.Errorf("access log: %w", err)
	}
	if l.Status < 100 || l.Status > 999 {
		return Entry{}, fmt.Errorf("access log: status %d", l.Status)
	}
	e := Entry{App: l.App, Status: l.Status, UpstreamMS: -1}
	if l.App != "" && spec.CheckName(l.App) != nil {
		return Entry{}, fmt.Errorf("access log: app %q", msg.Truncate(l.App, 64))
	}
	// "0.002", or "0.001, 0.003" after a retry, or "-" when no upstream answered.
	total, any := 0.0, false
	for _, part := range strings.FieldsFunc(l.UpstreamResponseTime, func(r rune) bool { return r == ',' || r == ' ' || r == ':' }) {
		if v, err := strconv.ParseFloat(part, 64); err == nil && v >= 0 {
			total, any = total+v, true
		}
	}
	if any {
		e.UpstreamMS = total * 1000
	}
	e.UpstreamError = l.Upstream != "" && l.Upstream != "-" && (l.Status == 502 || l.Status == 503 || l.Status == 504)
	e.RequestSeconds = -1
	if v, err := strconv.ParseFloat(string(l.RequestTime), 64); err == nil && v >= 0 {
		e.RequestSeconds = v
	}
	e.ConnectErrors = connectErrors(l.UpstreamStatus, l.UpstreamConnectTime)
	e.Upstreams, e.UpstreamStatuses, e.UpstreamConnects = l.Upstream, l.UpstreamStatus, l.UpstreamConnectTime
	return e, nil
}

// connectErrors counts the attempts whose connection failed, pairing the
// lists of $upstream_status and $upstream_connect_time: "502, 200" and
// "-, 0.001" is one refused connection, then an answer. nginx separates
// the attempts of one upstream group with ", " and those of the groups an
// internal redirect passed through with " : ". A connection that failed
// has no connect time ("-"); its status is 502 (refused, unreachable, no
// live upstream server) or 504 (connect timeout). It allocates nothing.
func connectErrors(status, connect string) int {
	n := 0
	for status != "" && connect != "" {
		var s, c string
		s, status = nextField(status)
		c, connect = nextField(connect)
		if c == "-" && (s == "502" || s == "504") {
			n++
		}
	}
	return n
}

// nextAddr splits off the first address of $upstream_addr: addresses
// hold colons, so only commas and spaces separate them, and the lone
// " : " between upstream groups is skipped.
func nextAddr(list string) (addr, rest string) {
	for {
		i := 0
		for i < len(list) && (list[i] == ',' || list[i] == ' ') {
			i++
		}
		j := i
		for j < len(list) && list[j] != ',' && list[j] != ' ' {
			j++
		}
		if list[i:j] != ":" {
			return list[i:j], list[j:]
		}
		list = list[j:]
	}
}

// nextField splits off the first item of a list separated by commas,
// colons and spaces.
func nextField(list string) (field, rest string) {
	i := 0
	for i < len(list) && (list[i] == ',' || list[i] == ':' || list[i] == ' ') {
		i++
	}
	j := i
	for j < len(list) && list[j] != ',' && list[j] != ':' && list[j] != ' ' {
		j++
	}
	return list[i:j], list[j:]
}

// agg is one app's window.
type agg struct {
	requests, upstreamErrors int64
	status                   msg.StatusCounts
	latency                  *msg.Histogram
}

// Aggregator sums entries per app over a window. It is safe for concurrent use.
type Aggregator struct {
	node  string
	mu    sync.Mutex
	start time.Time
	apps  map[string]*agg
}

var (
	_ traffic.Flusher = (*Aggregator)(nil)
	_ Sink            = (*Aggregator)(nil)
)

// NewAggregator starts a window at now.
func NewAggregator(node string, now time.Time) *Aggregator {
	return &Aggregator{node: node, start: now, apps: map[string]*agg{}}
}

// Add counts one entry; entries without an app are not counted.
func (a *Aggregator) Add(e Entry) {
	if e.App == "" {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	g, ok := a.apps[e.App]
	if !ok {
		g = &agg{latency: &msg.Histogram{RelativeAccuracy: msg.HistogramAccuracy}}
		a.apps[e.App] = g
	}
	g.requests++
	switch e.Status / 100 {
	case 1:
		g.status.S1xx++
	case 2:
		g.status.S2xx++
	case 3:
		g.status.S3xx++
	case 4:
		g.status.S4xx++
	default:
		g.status.S5xx++
	}
	if e.UpstreamError {
		g.upstreamErrors++
	}
	if e.UpstreamMS >= 0 {
		g.latency.Add(e.UpstreamMS, 1)
	}
}

// Flush ends the window at now and returns one Metrics per app that had
// requests or is in known (an app this lbagent routes: a window of zero
// requests says "no traffic", which a missing window cannot, since it also
// means "lbagent gone"), sorted by app, then starts a new window.
func (a *Aggregator) Flush(now time.Time, known []string) []*msg.Metrics {
	a.mu.Lock()
	apps, start := a.apps, a.start
	a.apps, a.start = map[string]*agg{}, now
	a.mu.Unlock()
	for _, name := range known {
		if _, ok := apps[name]; !ok {
			apps[name] = &agg{latency: &msg.Histogram{RelativeAccuracy: msg.HistogramAccuracy}}
		}
	}
	window := now.Sub(start)
	if window <= 0 {
		window = time.Millisecond
	}
	out := make([]*msg.Metrics, 0, len(apps))
	for name, g := range apps {
		m := &msg.Metrics{Node: a.node, App: name, WindowStart: start.UTC(), Window: spec.Duration(window),
			Requests: g.requests, RPS: float64(g.requests) / window.Seconds(), Status: g.status, UpstreamErrors: g.upstreamErrors}
		if g.latency.Count() > 0 {
			g.latency.Finish()
			m.P50MS, m.P95MS, m.P99MS = g.latency.Quantile(0.5), g.latency.Quantile(0.95), g.latency.Quantile(0.99)
			m.LatencyHistogram = g.latency
		}
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].App < out[j].App })
	return out
}

// Receiver reads access log datagrams from a unix socket into an Aggregator.
type Receiver struct {
	// Group is the group, by name or numeric id, that may send to the
	// socket (mode 0660): nginx's workers' group. Empty picks, when
	// lbagent runs as root, the primary group of the user nginx starts its
	// workers as (see workerUsers), else lbagent's own group.
	// Set it before Run.
	Group string

	// Export, when set, also takes every entry (the per-app Prometheus
	// metrics). Set it before Run.
	Export Sink

	path    string
	agg     *Aggregator
	invalid atomic.Uint64
	ready   chan struct{}
}

// NewReceiver returns a receiver on the unix datagram socket at path.
func NewReceiver(path string, agg *Aggregator) *Receiver {
	return &Receiver{path: path, agg: agg, ready: make(chan struct{})}
}

// Invalid counts datagrams that failed to parse.
func (r *Receiver) Invalid() uint64 { return r.invalid.Load() }

// Ready is closed once the socket listens.
func (r *Receiver) Ready() <-chan struct{} { return r.ready }

// Run listens until ctx ends. The socket is 0660 and belongs to Group, so
// nginx workers running as an unprivileged user can send to it and other
// local users cannot forge traffic metrics.
func (r *Receiver) Run(ctx context.Context) error {
	gid, err := socketGroup(r.Group, os.Geteuid(), user.Lookup, user.LookupGroup)
	if err != nil {
		return fmt.Errorf("access log socket %s: %w", r.path, err)
	}
	_ = os.Remove(r.path) // a socket left by a previous run
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: r.path, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("access log socket %s: %w", r.path, err)
	}
	defer os.Remove(r.path)
	err = os.Chmod(r.path, 0o660)
	if err == nil && gid >= 0 {
		if err = os.Chown(r.path, -1, gid); err != nil {
			err = fmt.Errorf("give it group %d (--access-log-group): %w", gid, err)
		}
	}
	if err != nil {
		conn.Close()
		return fmt.Errorf("access log socket %s: %w", r.path, err)
	}
	close(r.ready)
	go func() {
		<-ctx.Done()
		conn.Close()
	}()
	buf := make([]byte, 64<<10)
	for {
		n, err := conn.Read(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("access log socket %s: %w", r.path, err)
		}
		e, err := Parse(buf[:n])
		if err != nil {
			r.invalid.Add(1)
			continue
		}
		r.agg.Add(e)
		if r.Export != nil {
			r.Export.Add(e)
		}
	}
}

// workerUsers are the users nginx workers run as when nginx starts as root
// and its config has no user directive: nginx.org's and Alpine's builds use
// nginx, others (Debian's, OpenResty's) nobody, whose primary group is the
// one nginx picks (nogroup on Debian).
var workerUsers = []string{"nginx", "nobody"}

// socketGroup resolves the socket's group: a group name or numeric id, or
// for "" the primary group of a nginx worker user when euid is root. -1
// leaves the socket with the process's group.
func socketGroup(name string, euid int, lookupUser func(string) (*user.User, error), lookupGroup func(string) (*user.Group, error)) (int, error) {
	if name != "" {
		if n, err := strconv.Atoi(name); err == nil && n >= 0 {
			return n, nil
		}
		g, err := lookupGroup(name)
		if err != nil {
			return 0, fmt.Errorf("--access-log-group %q: %w", name, err)
		}
		return strconv.Atoi(g.Gid)
	}
	if euid != 0 {
		return -1, nil
	}
	for _, u := range workerUsers {
		if pw, err := lookupUser(u); err == nil {
			if gid, err := strconv.Atoi(pw.Gid); err == nil {
				return gid, nil
			}
		}
	}
	return -1, nil
}
