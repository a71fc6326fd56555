// Package bus is Berth's one adapter for NATS: it connects with reconnects
// that never give up, creates the JetStream KV buckets, watches a bucket as
// a typed snapshot followed by updates, publishes and subscribes, runs an
// embedded server for development and tests, and defines what each role's
// credential may do there (auth.go). No other package imports nats.go or
// nats-server, and nothing here returns their types, except the server's
// user permissions (Permissions, AuthUsers), which exist to be handed back
// to Embedded.
package bus

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/berthhq/berth/common/msg"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

// Options configures a connection. Credentials are never logged.
type Options struct {
	// URL is one server URL or a comma-separated list of them: the
	// members of a NATS cluster. The client tries them in random order,
	// learns the other members from the server (discovered servers), and
	// on a lost connection moves to another member at once.
	URL string
	// Name is the client name servers show for this connection.
	Name string
	// CredsFile is a NATS credentials file (JWT and nkey seed).
	CredsFile string
	// NKeyFile is a file holding an nkey seed.
	NKeyFile string
	// Token is a bearer token.
	Token string
	// TLSCA is a PEM file of CAs that sign the server certificate.
	TLSCA string
	// TLSCert and TLSKey are the client certificate and key, both or neither.
	TLSCert, TLSKey string
	// ConnectTimeout bounds one connection attempt; zero means 2s.
	ConnectTimeout time.Duration
	// ReconnectWait is the first delay between reconnect attempts; it grows
	// to ReconnectMax, each delay with up to 50% random jitter. Zero means 100ms.
	ReconnectWait time.Duration
	// ReconnectMax caps the delay between reconnect attempts; zero means 5s.
	ReconnectMax time.Duration
	// Keys, when set, seal every value and message this connection writes
	// and verify every one it reads (records.go); Names then says which
	// role owns each bucket and subject.
	Keys *Keys
	// Names are the contract's names, needed with Keys.
	Names msg.Names
	// Replicas is how many servers of a NATS cluster hold each bucket
	// this connection creates or updates (EnsureBuckets): 1, 3 or 5;
	// zero means 1. A bucket that has fewer is raised to it.
	Replicas int
}

// ValidReplicas are the bucket replica counts a connection accepts: odd,
// so that a quorum survives the loss of one server (3) or two (5).
var ValidReplicas = []int{1, 3, 5}

// Validate reports options that cannot work, naming the field.
func (o Options) Validate() error {
	var errs []error
	if strings.TrimSpace(o.URL) == "" {
		errs = append(errs, errors.New("nats url: must be set (e.g. nats://127.0.0.1:4222)"))
	} else {
		errs = append(errs, checkURLs(o.URL)...)
	}
	if o.Replicas != 0 && !slices.Contains(ValidReplicas, o.Replicas) {
		errs = append(errs, fmt.Errorf("nats replicas (%d): must be 1, 3 or 5 (an odd count, at most the servers of the NATS cluster)", o.Replicas))
	}
	if (o.TLSCert == "") != (o.TLSKey == "") {
		errs = append(errs, errors.New("nats tls: a client certificate and its key must be given together"))
	}
	if o.CredsFile != "" && o.NKeyFile != "" {
		errs = append(errs, errors.New("nats auth: use a creds file or an nkey file, not both"))
	}
	if o.ConnectTimeout < 0 || o.ReconnectWait < 0 || o.ReconnectMax < 0 {
		errs = append(errs, errors.New("nats timeouts: must not be negative"))
	}
	return errors.Join(errs...)
}

// natsSchemes are the URL schemes nats.go dials.
var natsSchemes = []string{"nats", "tls", "ws", "wss"}

// checkURLs checks each server of a comma-separated list the way nats.go
// reads it (no scheme means nats://, no port means the scheme's default),
// naming the bad one by its place in the list and without its password.
func checkURLs(list string) []error {
	var errs []error
	parts := strings.Split(list, ",")
	seen := map[string]bool{}
	ws := 0
	for i, p := range parts {
		p = strings.TrimSpace(p)
		where := fmt.Sprintf("nats url %d of %d (%s)", i+1, len(parts), redactURL(p))
		if p == "" {
			errs = append(errs, fmt.Errorf("nats url %d of %d: empty: separate the servers with single commas", i+1, len(parts)))
			continue
		}
		raw := p
		if !strings.Contains(raw, "://") {
			raw = "nats://" + raw
		}
		u, err := url.Parse(raw)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: not a URL: want nats://host:port", where))
			continue
		}
		switch {
		case !slices.Contains(natsSchemes, u.Scheme):
			errs = append(errs, fmt.Errorf("%s: scheme %q: want one of %v", where, u.Scheme, natsSchemes))
		case u.Hostname() == "":
			errs = append(errs, fmt.Errorf("%s: no host: want nats://host:port", where))
		case u.Port() != "" && !validPort(u.Port()):
			errs = append(errs, fmt.Errorf("%s: port %q: want 1-65535", where, u.Port()))
		case u.Path != "" && u.Path != "/" || u.RawQuery != "" || u.Fragment != "":
			errs = append(errs, fmt.Errorf("%s: a server URL has no path, query or fragment: want nats://host:port", where))
		case seen[u.Host]:
			errs = append(errs, fmt.Errorf("%s: listed twice", where))
		}
		seen[u.Host] = true
		if u.Scheme == "ws" || u.Scheme == "wss" {
			ws++
		}
	}
	if ws > 0 && ws < len(parts) {
		errs = append(errs, errors.New("nats url: websocket (ws, wss) and other servers cannot be mixed in one list"))
	}
	return errs
}

func validPort(p string) bool {
	n, err := strconv.Atoi(p)
	return err == nil && n >= 1 && n <= 65535
}

// Conn is a connection to NATS with its JetStream context. It is safe for
// concurrent use. It keeps reconnecting until Close or Drain.
type Conn struct {
	nc     *nats.Conn
	js     jetstream.JetStream
	logger *zap.Logger

	// refusals ends operations whose publish the server refused.
	refusals refusals
	// seals seals what is written and opens what is read; nil without Keys.
	seals *sealer
	// replicas is Options.Replicas, at least 1.
	replicas int
	// forged counts values and messages dropped for a missing or bad seal.
	forged    atomic.Uint64
	forgedLog logLimiter

	mu         sync.Mutex
	reconnects []chan struct{} // one per Watcher, signalled on each reconnect
	// closed is closed by the last of the connection's callbacks.
	closed chan struct{}
}

// Connect dials NATS. It returns at once when the server is down: the
// connection keeps trying in the background (RetryOnFailedConnect), so a
// daemon can start before NATS does.
func Connect(ctx context.Context, o Options, logger *zap.Logger) (*Conn, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	logger = logger.Named("bus")
	c := &Conn{logger: logger, closed: make(chan struct{}), replicas: max(o.Replicas, 1)}
	if o.Keys != nil {
		if o.Names.Prefix() == "" {
			return nil, errors.New("nats record keys: the contract's names (prefix) must be given with them")
		}
		c.seals = newSealer(o.Keys, o.Names)
	}
	wait, maxWait := o.ReconnectWait, o.ReconnectMax
	if wait == 0 {
		wait = 100 * time.Millisecond
	}
	if maxWait == 0 {
		maxWait = 5 * time.Second
	}
	timeout := o.ConnectTimeout
	if timeout == 0 {
		timeout = 2 * time.Second
	}
	opts := []nats.Option{
		nats.Name(o.Name),
		nats.Timeout(timeout),
		nats.MaxReconnects(-1),
		nats.RetryOnFailedConnect(true),
		nats.PingInterval(5 * time.Second),
		nats.MaxPingsOutstanding(2),
		nats.CustomReconnectDelay(func(attempts int) time.Duration { return backoff(attempts, wait, maxWait) }),
		// The pool is shuffled (nats.go's default), so that daemons spread
		// over a cluster's members, and the members a server announces are
		// added to it (discovered servers), so that a client given one
		// member still fails over to the others.
		nats.ConnectHandler(func(nc *nats.Conn) {
			logger.Info("nats connected", append(serverFields(nc), zap.Strings("servers", redactAll(nc.Servers())))...)
		}),
		nats.DiscoveredServersHandler(func(nc *nats.Conn) {
			logger.Info("nats cluster members discovered", zap.Strings("servers", redactAll(nc.DiscoveredServers())))
		}),
		nats.LameDuckModeHandler(func(nc *nats.Conn) {
			logger.Info("nats server is shutting down (lame duck mode): moving to another member", serverFields(nc)...)
		}),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			logger.Warn("nats disconnected", zap.Error(err))
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			logger.Info("nats reconnected", serverFields(nc)...)
			c.notifyReconnect()
		}),
		nats.ClosedHandler(func(*nats.Conn) {
			logger.Info("nats connection closed")
			close(c.closed)
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subject := ""
			if sub != nil {
				subject = sub.Subject
			}
			logger.Warn("nats async error", zap.String("subject", subject), zap.Error(err))
			if denied, ok := deniedSubject(err); ok {
				c.refusals.refused(denied, err)
			}
		}),
	}
	if o.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(o.CredsFile))
	}
	if o.NKeyFile != "" {
		opt, err := nats.NkeyOptionFromSeed(o.NKeyFile)
		if err != nil {
			return nil, fmt.Errorf("nats nkey file %s: %w", o.NKeyFile, err)
		}
		opts = append(opts, opt)
	}
	if o.Token != "" {
		opts = append(opts, nats.Token(o.Token))
	}
	if o.TLSCA != "" {
		opts = append(opts, nats.RootCAs(o.TLSCA))
	}
	if o.TLSCert != "" {
		opts = append(opts, nats.ClientCert(o.TLSCert, o.TLSKey))
	}
	nc, err := nats.Connect(o.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("nats connect: %w", err)
	}
	// A server that is down is retried in the background; one that is up
	// and refuses this client's credentials closes the connection at once.
	// That is a configuration error: refuse to start, naming the flags.
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline) && nc.Status() != nats.CONNECTED && nc.Status() != nats.CLOSED; {
		time.Sleep(5 * time.Millisecond)
	}
	if nc.Status() == nats.CLOSED {
		nc.Close()
		return nil, authError(o, nc.LastError())
	}
	if nc.IsConnected() && !nc.AuthRequired() {
		logger.Warn("the NATS server requires no authentication: any process that reaches it can rewrite Berth's state and routes; run it with Berth's roles (docs/operations.md, Security model)",
			zap.String("url", nc.ConnectedUrlRedacted()))
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("nats jetstream: %w", err)
	}
	c.nc, c.js = nc, js
	return c, nil
}

// authError explains a connection the server closed at once: most often
// credentials missing or refused.
func authError(o Options, err error) error {
	if err == nil {
		err = errors.New("connection closed by the server")
	}
	given := "none were given"
	switch {
	case o.NKeyFile != "":
		given = "--nats-nkey " + o.NKeyFile + " was refused"
	case o.CredsFile != "":
		given = "--nats-creds " + o.CredsFile + " was refused"
	case o.Token != "":
		given = "the --nats-token-file token was refused"
	}
	return fmt.Errorf("nats %s: %w: the server requires credentials and %s; pass this daemon's role credential with --nats-nkey "+
		"(with the scheduler's embedded NATS: `scheduler nats-credential <role>` prints it), or --nats-creds or --nats-token-file", redactURL(o.URL), err, given)
}

// serverFields are the log fields naming the server nc is connected to:
// its URL (without user info), and in a cluster the member's name.
func serverFields(nc *nats.Conn) []zap.Field {
	f := []zap.Field{zap.String("url", nc.ConnectedUrlRedacted()), zap.String("server", nc.ConnectedServerName())}
	if cluster := nc.ConnectedClusterName(); cluster != "" {
		f = append(f, zap.String("cluster", cluster))
	}
	return f
}

// redactAll is redactURL of each URL.
func redactAll(urls []string) []string {
	out := make([]string, len(urls))
	for i, u := range urls {
		out[i] = redactURL(u)
	}
	return out
}

// redactURL drops user info (user:password@) from NATS URLs, for errors
// and logs. It works on the text, so that a URL nats.go reads but
// net/url does not (no scheme, a password with a colon) is redacted too.
func redactURL(urls string) string {
	parts := strings.Split(urls, ",")
	for i, p := range parts {
		at := strings.LastIndex(p, "@")
		if at < 0 {
			continue
		}
		start := 0
		if s := strings.Index(p, "://"); s >= 0 && s < at {
			start = s + len("://")
		}
		parts[i] = p[:start] + p[at+1:]
	}
	return strings.Join(parts, ",")
}

// backoff is the delay before reconnect attempt n: doubling from wait up to
// maxWait, with up to 50% random jitter so that many clients do not return
// in step after a server restart.
func backoff(attempts int, wait, maxWait time.Duration) time.Duration {
	d := wait
	for i := 1; i < attempts && d < maxWait; i++ {
		d *= 2
	}
	d = min(d, maxWait)
	return d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
}

// Connected reports whether the connection is up now.
func (c *Conn) Connected() bool { return c.nc.IsConnected() }

// WaitConnected blocks until the connection is up or ctx ends.
func (c *Conn) WaitConnected(ctx context.Context) error {
	for !c.nc.IsConnected() {
		if c.nc.IsClosed() {
			return errors.New("nats: connection closed")
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("nats: not connected: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// Drain lets subscriptions finish the messages they hold, flushes what was
// published, and closes the connection; it waits up to ctx's deadline.
func (c *Conn) Drain(ctx context.Context) error {
	closed := make(chan struct{})
	c.nc.SetClosedHandler(func(*nats.Conn) { close(closed) })
	if err := c.nc.Drain(); err != nil {
		c.nc.Close()
		return fmt.Errorf("nats drain: %w", err)
	}
	select {
	case <-closed:
		return nil
	case <-ctx.Done():
		c.nc.Close()
		return fmt.Errorf("nats drain: %w", ctx.Err())
	}
}

// Close closes the connection and waits (at most 2 s) until its callbacks
// have run, so that nothing logs after Close returns.
func (c *Conn) Close() {
	c.nc.Close()
	select {
	case <-c.closed:
	case <-time.After(2 * time.Second):
	}
}

// reconnected returns a channel that receives a value after each reconnect,
// and a function that stops the notifications.
func (c *Conn) reconnected() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	c.mu.Lock()
	c.reconnects = append(c.reconnects, ch)
	c.mu.Unlock()
	return ch, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		for i, x := range c.reconnects {
			if x == ch {
				c.reconnects = append(c.reconnects[:i], c.reconnects[i+1:]...)
				return
			}
		}
	}
}

func (c *Conn) notifyReconnect() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, ch := range c.reconnects {
		select {
		case ch <- struct{}{}:
		default: // one pending notice is enough
		}
	}
}
