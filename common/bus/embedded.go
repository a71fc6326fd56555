package bus

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"go.uber.org/zap"
)

// EmbeddedOptions configures an in-process NATS server.
type EmbeddedOptions struct {
	// Host is the listen address; empty means 127.0.0.1.
	Host string
	// Port is the client port; -1 picks a random free port (tests), 0 means 4222.
	Port int
	// StoreDir is where JetStream keeps its data. Required.
	StoreDir string
	// ServerName names the server; empty means "berth-embedded".
	ServerName string
	// Users, when set, are the only clients the server accepts, each with
	// its permissions (see AuthUsers); an anonymous client is refused.
	// Empty means no authentication, for development and tests.
	Users []*server.NkeyUser
	// ConfigFile, when set, is a nats-server config file whose settings
	// (its authorization above all) the server starts from; Host, Port,
	// StoreDir and ServerName above still apply, and JetStream is on.
	// Users must then be empty.
	ConfigFile string
}

// EmbeddedServer is an in-process NATS server with JetStream.
type EmbeddedServer struct {
	s *server.Server

	mu   sync.Mutex // SetUsers
	opts *server.Options
	// users says the server's users came from EmbeddedOptions.Users,
	// which SetUsers may then replace.
	users bool
}

// Embedded starts an in-process NATS server with JetStream, for development
// (scheduler run without --nats-url) and tests, and waits until it accepts
// clients. Its log goes to logger.
func Embedded(opts EmbeddedOptions, logger *zap.Logger) (*EmbeddedServer, error) {
	if opts.StoreDir == "" {
		return nil, errors.New("embedded nats: a JetStream store dir is required")
	}
	if opts.Host == "" {
		opts.Host = "127.0.0.1"
	}
	if opts.Port == 0 {
		opts.Port = 4222
	}
	if opts.ServerName == "" {
		opts.ServerName = "berth-embedded"
	}
	so := &server.Options{}
	if opts.ConfigFile != "" {
		if len(opts.Users) > 0 {
			return nil, errors.New("embedded nats: a config file or generated users, not both")
		}
		var err error
		if so, err = server.ProcessConfigFile(opts.ConfigFile); err != nil {
			return nil, fmt.Errorf("embedded nats: config %s: %w", opts.ConfigFile, err)
		}
	}
	so.ServerName, so.Host, so.Port = opts.ServerName, opts.Host, opts.Port
	so.JetStream, so.StoreDir, so.NoSigs = true, opts.StoreDir, true
	if len(opts.Users) > 0 {
		so.Nkeys = opts.Users
	}
	s, err := server.NewServer(so)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	s.SetLoggerV2(serverLogger{logger.Named("nats-server").Sugar()}, false, false, false)
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("embedded nats on %s:%d: not ready within 10s", opts.Host, opts.Port)
	}
	return &EmbeddedServer{s: s, opts: so.Clone(), users: len(opts.Users) > 0}, nil
}

// SetUsers replaces the server's users while it runs (a new lbagent node,
// a key rotated or retired): new clients are checked against them at
// once, and a connected client whose key is no longer a user is
// disconnected. It refuses an empty list, and a server whose users came
// from a config file.
func (e *EmbeddedServer) SetUsers(users []*server.NkeyUser) error {
	if !e.users {
		return errors.New("embedded nats: its users come from a config file (--nats-server-config): change them there")
	}
	if len(users) == 0 {
		return errors.New("embedded nats: no users: the server would accept anyone")
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if sameUsers(e.opts.Nkeys, users) {
		// No reload for nothing: nats-server's ReloadOptions races with
		// its own readers of the options (a JetStream direct get reads
		// MaxPending unlocked; nats-io/nats-server#8499), and the
		// scheduler gives the server its users at every start.
		return nil
	}
	o := e.opts.Clone()
	o.Nkeys = users
	if err := e.s.ReloadOptions(o); err != nil {
		return fmt.Errorf("embedded nats: reload users: %w", err)
	}
	e.opts = o.Clone()
	return nil
}

// sameUsers reports whether a and b are the same users: each key with the
// same account and permissions, in any order.
func sameUsers(a, b []*server.NkeyUser) bool {
	if len(a) != len(b) {
		return false
	}
	of := func(users []*server.NkeyUser) (map[string]string, bool) {
		out := make(map[string]string, len(users))
		for _, u := range users {
			account := ""
			if u.Account != nil {
				account = u.Account.Name
			}
			perms, err := json.Marshal(u.Permissions)
			if err != nil {
				return nil, false
			}
			out[u.Nkey] = account + "\x00" + string(perms)
		}
		return out, true
	}
	ma, okA := of(a)
	mb, okB := of(b)
	return okA && okB && maps.Equal(ma, mb)
}

// URL is the client URL, nats://host:port.
func (e *EmbeddedServer) URL() string { return e.s.ClientURL() }

// Shutdown stops the server and waits until it has stopped.
func (e *EmbeddedServer) Shutdown() {
	e.s.Shutdown()
	e.s.WaitForShutdown()
}

// serverLogger routes nats-server's log to zap. Its Fatalf logs an error:
// only main exits.
type serverLogger struct{ l *zap.SugaredLogger }

func (s serverLogger) Noticef(format string, v ...any) { s.l.Debugf(format, v...) }
func (s serverLogger) Warnf(format string, v ...any)   { s.l.Warnf(format, v...) }
func (s serverLogger) Fatalf(format string, v ...any)  { s.l.Errorf(format, v...) }
func (s serverLogger) Errorf(format string, v ...any)  { s.l.Errorf(format, v...) }
func (s serverLogger) Debugf(format string, v ...any)  { s.l.Debugf(format, v...) }
func (s serverLogger) Tracef(format string, v ...any)  { s.l.Debugf(format, v...) }
