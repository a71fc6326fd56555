package bus

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"
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
	// auth checks clients against the users of EmbeddedOptions.Users,
	// which SetUsers may then replace; nil when the server's users come
	// from a config file.
	auth *nkeyAuth
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
	var auth *nkeyAuth
	if len(opts.Users) > 0 {
		// The users are checked by nkeyAuth rather than Options.Nkeys, so
		// that SetUsers need not reload the server's options: its
		// ReloadOptions races with the server's own readers of them (a
		// JetStream direct get reads MaxPending unlocked;
		// nats-io/nats-server#8499). The nonce is what a client signs.
		auth = newNkeyAuth(opts.Users)
		so.CustomClientAuthentication, so.AlwaysEnableNonce = auth, true
	}
	s, err := server.NewServer(so)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	if auth != nil {
		auth.srv = s
	}
	s.SetLoggerV2(serverLogger{logger.Named("nats-server").Sugar()}, false, false, false)
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("embedded nats on %s:%d: not ready within 10s", opts.Host, opts.Port)
	}
	return &EmbeddedServer{s: s, auth: auth}, nil
}

// SetUsers replaces the server's users while it runs (a new lbagent node,
// a key rotated or retired): new clients are checked against them at
// once, and a connected client whose key is no longer a user, or whose
// key's permissions changed, is disconnected (a client with a key it
// still has reconnects with that key's new permissions). It refuses an
// empty list, and a server whose users came from a config file.
func (e *EmbeddedServer) SetUsers(users []*server.NkeyUser) error {
	if e.auth == nil {
		return errors.New("embedded nats: its users come from a config file (--nats-server-config): change them there")
	}
	if len(users) == 0 {
		return errors.New("embedded nats: no users: the server would accept anyone")
	}
	return e.auth.set(users)
}

// nkeyAuth is the embedded server's client authentication: a client is
// accepted when its CONNECT names the public nkey of a current user and
// signs the server's nonce with that key, and then gets the user's
// permissions and account, as nats-server does for Options.Nkeys.
type nkeyAuth struct {
	srv *server.Server // set before the server starts

	mu    sync.Mutex // users, list; set runs one at a time under it
	users map[string]*server.NkeyUser
	list  []*server.NkeyUser // as given, for sameUsers
}

func newNkeyAuth(users []*server.NkeyUser) *nkeyAuth {
	a := &nkeyAuth{}
	a.users, a.list = userMap(users), slices.Clone(users)
	return a
}

// userMap maps each user's public key to a copy of it, its permissions
// completed as nats-server completes Options.Nkeys'.
func userMap(users []*server.NkeyUser) map[string]*server.NkeyUser {
	out := make(map[string]*server.NkeyUser, len(users))
	for _, u := range users {
		c := *u
		c.Permissions = clonePermissions(u.Permissions)
		validateResponsePermissions(c.Permissions)
		out[u.Nkey] = &c
	}
	return out
}

// Check implements server.Authentication: it verifies the client's
// signature of its nonce with the public key it names, and registers the
// user of that key. An anonymous client, an unknown key, and a signature
// by another key are refused.
func (a *nkeyAuth) Check(c server.ClientAuthentication) bool {
	if c.Kind() != server.CLIENT {
		return false
	}
	opts := c.GetOpts()
	// Held until the user is registered: set swaps the users under it and
	// lists the clients after, so a client checked against the users set
	// replaces shows its key in that listing, and is disconnected if the
	// key is gone (a.mu, then the server's locks, in both).
	a.mu.Lock()
	defer a.mu.Unlock()
	u, ok := a.users[opts.Nkey]
	if !ok || opts.Sig == "" || u.ProxyRequired || !standardAllowed(u.AllowedConnectionTypes) {
		return false
	}
	// As nats-server's own nkey check: raw URL base64, else standard.
	sig, err := base64.RawURLEncoding.DecodeString(opts.Sig)
	if err != nil {
		if sig, err = base64.StdEncoding.DecodeString(opts.Sig); err != nil {
			return false
		}
	}
	pub, err := nkeys.FromPublicKey(opts.Nkey)
	if err != nil {
		return false
	}
	if err := pub.Verify(c.GetNonce(), sig); err != nil {
		return false
	}
	account := u.Account
	if account != nil && a.srv != nil {
		// The server's own account of that name, as for Options.Nkeys.
		if acc, err := a.srv.LookupAccount(account.Name); err == nil {
			account = acc
		}
	}
	// No account is the global one, as for Options.Nkeys.
	c.RegisterUser(&server.User{Username: u.Nkey, Permissions: clonePermissions(u.Permissions), Account: account})
	return true
}

// standardAllowed reports whether connection types (a user's allowed
// ones; none means any) allow a plain client connection.
func standardAllowed(types map[string]struct{}) bool {
	if len(types) == 0 {
		return true
	}
	_, ok := types["STANDARD"] // jwt.ConnectionTypeStandard
	return ok
}

// set makes users the users, and disconnects every connected client whose
// key is no longer one or whose key's user changed.
func (a *nkeyAuth) set(users []*server.NkeyUser) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if sameUsers(a.list, users) {
		return nil
	}
	next := userMap(users)
	stale := map[string]bool{}
	for key, u := range a.users {
		if v, ok := next[key]; !ok || !sameUsers([]*server.NkeyUser{u}, []*server.NkeyUser{v}) {
			stale[key] = true
		}
	}
	a.users, a.list = next, slices.Clone(users)
	if len(stale) == 0 {
		return nil
	}
	// A client checked against the old users has named its key by now,
	// so the listing below, taken after the swap, shows it.
	// Listed in full before any is closed, so that closing them does not
	// shift the pages.
	var kick []uint64
	for offset := 0; ; {
		cz, err := a.srv.Connz(&server.ConnzOptions{Username: true, Sort: server.ByCid, Offset: offset, Limit: server.DefaultConnListSize})
		if err != nil {
			return fmt.Errorf("embedded nats: list clients: %w", err)
		}
		for _, ci := range cz.Conns {
			if stale[ci.AuthorizedUser] {
				kick = append(kick, ci.Cid)
			}
		}
		if len(cz.Conns) < server.DefaultConnListSize {
			break
		}
		offset += len(cz.Conns)
	}
	for _, cid := range kick {
		// Its only error is a client gone meanwhile.
		_ = a.srv.DisconnectClientByID(cid)
	}
	return nil
}

// clonePermissions is a deep copy of p.
func clonePermissions(p *server.Permissions) *server.Permissions {
	if p == nil {
		return nil
	}
	subj := func(s *server.SubjectPermission) *server.SubjectPermission {
		if s == nil {
			return nil
		}
		return &server.SubjectPermission{Allow: slices.Clone(s.Allow), Deny: slices.Clone(s.Deny)}
	}
	out := &server.Permissions{Publish: subj(p.Publish), Subscribe: subj(p.Subscribe)}
	if p.Response != nil {
		r := *p.Response
		out.Response = &r
	}
	return out
}

// validateResponsePermissions completes p as nats-server completes a
// configured user's: with response permissions, a publish permission
// that allows nothing by itself, and the default response limits.
func validateResponsePermissions(p *server.Permissions) {
	if p == nil || p.Response == nil {
		return
	}
	if p.Publish == nil {
		p.Publish = &server.SubjectPermission{}
	}
	if p.Publish.Allow == nil {
		p.Publish.Allow = []string{}
	}
	if p.Response.MaxMsgs == 0 {
		p.Response.MaxMsgs = server.DEFAULT_ALLOW_RESPONSE_MAX_MSGS
	}
	if p.Response.Expires == 0 {
		p.Response.Expires = server.DEFAULT_ALLOW_RESPONSE_EXPIRATION
	}
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
