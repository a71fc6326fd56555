// Package console is the scheduler's web console at /ui/ on the API's
// listener: server-rendered pages (html/template, embedded with the CSS)
// that a browser signs in to with an API token. It owns the console's
// sessions, its CSRF tokens and its security headers; what it shows it
// reads as the API does. Sessions live in one replica's memory: a
// browser signs in again when a load balancer sends it to another
// replica, and a restart signs everyone out.
package console

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/berthhq/berth/scheduler/internal/api"
	"github.com/berthhq/berth/scheduler/internal/auth"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Cookie names: the session, and the login form's double-submit token.
const (
	SessionCookie = "berth_session"
	LoginCookie   = "berth_login"
)

// DefaultTTL is how long a session lasts from sign-in.
const DefaultTTL = 8 * time.Hour

// maxForm caps a form's body.
const maxForm = 16 << 10

// CSP is the Content-Security-Policy of every /ui/ response: only this
// origin's files, no inline script or style, no framing, forms posting
// only here.
const CSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

// Authenticator checks an API token; auth.Keyring is one. Called
// concurrently.
type Authenticator interface {
	Authenticate(ctx context.Context, secret string) (auth.Identity, error)
}

var _ Authenticator = (*auth.Keyring)(nil)

// Options configure the console; Keyring and API must be set.
type Options struct {
	Keyring Authenticator
	// API is the scheduler's API handler: every page reads, and every
	// action changes, through it, as the signed-in token (apiclient.go).
	API http.Handler
	// Live feeds the pages' live updates; nil turns them off.
	Live *Hub
	// TTL is a session's life; 0: DefaultTTL.
	TTL time.Duration
	// Now is the clock; nil: time.Now.
	Now func() time.Time
	// Registerer takes the console's metrics (sign-ins, sessions, live
	// streams); nil registers none.
	Registerer prometheus.Registerer
}

// pages are the templates, each rendered inside templates/layout.html.
var pages = []string{"login.html", "overview.html", "confirm.html", "hosts.html", "events.html", "app.html", "generation.html", "edge.html", "certificates.html"}

type console struct {
	o       Options
	logger  *zap.Logger
	tpl     map[string]*template.Template
	sess    *sessions
	metrics *metrics
}

// New returns the handler of /ui/ and everything under it.
func New(o Options, logger *zap.Logger) (http.Handler, error) {
	if o.TTL <= 0 {
		o.TTL = DefaultTTL
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	c := &console{o: o, logger: logger.Named("console"), tpl: map[string]*template.Template{}, sess: newSessions(), metrics: newMetrics()}
	if o.Registerer != nil {
		for _, col := range c.collectors() {
			if err := o.Registerer.Register(col); err != nil {
				return nil, fmt.Errorf("register the console's metrics: %w", err)
			}
		}
	}
	for _, page := range pages {
		t, err := template.ParseFS(templateFS, "templates/layout.html", "templates/"+page)
		if err != nil {
			return nil, err
		}
		c.tpl[page] = t
	}
	static, err := fs.Sub(staticFS, "static")
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("GET /ui/static/", http.StripPrefix("/ui/static/", http.FileServerFS(static)))
	mux.HandleFunc("GET /ui/login", c.loginForm)
	mux.HandleFunc("POST /ui/login", c.login)
	mux.HandleFunc("POST /ui/logout", c.signedIn(c.logout))
	mux.HandleFunc("GET /ui/{$}", c.signedIn(c.overview))
	mux.HandleFunc("GET /ui/live", c.signedIn(c.live))
	mux.HandleFunc("GET /ui/hosts", c.signedIn(c.hosts))
	mux.HandleFunc("GET /ui/events", c.signedIn(c.events))
	mux.HandleFunc("GET /ui/edge", c.signedIn(c.edge))
	mux.HandleFunc("GET /ui/certificates", c.signedIn(c.certificates))
	c.actions(mux)
	mux.HandleFunc("GET /ui/apps/{name}", c.signedIn(c.app))
	mux.HandleFunc("GET /ui/apps/{name}/history/{generation}", c.signedIn(c.generation))
	return headers(mux), nil
}

// headers sets the security headers of every /ui/ response.
func headers(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", CSP)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-store")
		h.Set("X-Frame-Options", "DENY")
		next.ServeHTTP(w, r)
	})
}

// viewer is the signed-in request's session and identity, and its
// token's secret, which the console sends to the API as the bearer.
type viewer struct {
	id     string
	who    auth.Identity
	csrf   string
	secret string
	// flash takes the session's one-off notice (sessions.takeFlash).
	flash func() string
}

// viewerOf is the viewer of a signed-in request.
func viewerOf(r *http.Request) viewer { return r.Context().Value(viewerKey{}).(viewer) }

// Base is what every signed-in page shows around its content: who is
// signed in, the CSRF token of its forms, which page it is (for the
// navigation) and what its live updates follow.
type Base struct {
	Token string
	Scope string
	CSRF  string
	// Page is the navigation's current entry: overview, hosts, edge,
	// certificates or events.
	Page string
	// Live says what the page's script does with live events: "refresh"
	// (the page is fetched again, at most once a second) or "events"
	// (each is added to the table); "" follows none. LiveApp limits them
	// to one app.
	Live    string
	LiveApp string
	// Flash is a one-off notice, Error what went wrong.
	Flash string
	Error string
}

// base is the Base of a signed-in request's page.
func base(r *http.Request, page string) Base {
	v := viewerOf(r)
	b := Base{Token: v.who.Name, Scope: v.who.Scope.String(), CSRF: v.csrf, Page: page}
	if v.flash != nil {
		b.Flash = v.flash()
	}
	return b
}

type viewerKey struct{}

// signedIn admits a request with a live session whose token the keyring
// still knows; any other is sent to the login page.
func (c *console) signedIn(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ck, err := r.Cookie(SessionCookie)
		if err != nil {
			http.Redirect(w, r, "/ui/login", http.StatusSeeOther)
			return
		}
		s, ok := c.sess.get(ck.Value, c.o.Now())
		if !ok {
			http.Redirect(w, r, "/ui/login", http.StatusSeeOther)
			return
		}
		who, err := c.o.Keyring.Authenticate(r.Context(), s.secret)
		switch {
		case errors.Is(err, auth.ErrUnknown):
			c.sess.drop(ck.Value)
			c.logger.Info("session ended: its token was revoked")
			http.Redirect(w, r, "/ui/login", http.StatusSeeOther)
			return
		case err != nil:
			c.logger.Warn("cannot check a session's token", zap.Error(err))
			http.Error(w, "cannot check the token: "+api.UnavailableMessage, http.StatusServiceUnavailable)
			return
		}
		if r.Method == http.MethodPost && !c.checkCSRF(w, r, s.csrf) {
			return
		}
		next(w, r.WithContext(context.WithValue(r.Context(), viewerKey{}, viewer{id: ck.Value, who: who, csrf: s.csrf, secret: s.secret,
			flash: func() string { return c.sess.takeFlash(ck.Value) }})))
	}
}

// checkCSRF answers 403 unless the form's csrf field is want.
func (c *console) checkCSRF(w http.ResponseWriter, r *http.Request, want string) bool {
	r.Body = http.MaxBytesReader(w, r.Body, maxForm)
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form: "+err.Error(), http.StatusBadRequest)
		return false
	}
	if !sameSecret(r.PostForm.Get("csrf"), want) {
		c.logger.Warn("form refused: missing or wrong csrf token", zap.String("path", r.URL.Path))
		http.Error(w, "forbidden: the form's CSRF token is missing or wrong; reload the page and try again", http.StatusForbidden)
		return false
	}
	return true
}

func (c *console) cookie(r *http.Request, name, value string, maxAge int) *http.Cookie {
	return &http.Cookie{Name: name, Value: value, Path: "/ui/", MaxAge: maxAge, HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil}
}

func (c *console) render(w http.ResponseWriter, code int, page string, data any) {
	var b strings.Builder
	if err := c.tpl[page].ExecuteTemplate(&b, "layout", data); err != nil {
		c.logger.Error("cannot render a page", zap.String("page", page), zap.Error(err))
		http.Error(w, "cannot render the page", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(code)
	_, _ = w.Write([]byte(b.String()))
}

type loginPage struct {
	Base
}

// loginForm serves the form with a fresh double-submit token, set as a
// cookie and as a hidden field.
func (c *console) loginForm(w http.ResponseWriter, r *http.Request) {
	c.showLogin(w, r, http.StatusOK, "")
}

func (c *console) showLogin(w http.ResponseWriter, r *http.Request, code int, msg string) {
	tok, err := random()
	if err != nil {
		c.logger.Error("cannot make a csrf token", zap.Error(err))
		http.Error(w, "cannot make a CSRF token", http.StatusInternalServerError)
		return
	}
	http.SetCookie(w, c.cookie(r, LoginCookie, tok, 600))
	c.render(w, code, "login.html", loginPage{Base{CSRF: tok, Error: msg}})
}

// login checks the form's token with the keyring and starts a session.
func (c *console) login(w http.ResponseWriter, r *http.Request) {
	ck, err := r.Cookie(LoginCookie)
	want := ""
	if err == nil {
		want = ck.Value
	}
	if !c.checkCSRF(w, r, want) {
		return
	}
	secret := strings.TrimSpace(r.PostForm.Get("token"))
	if secret == "" {
		c.showLogin(w, r, http.StatusBadRequest, "token: give an API token (scheduler tokens create makes one)")
		return
	}
	who, err := c.o.Keyring.Authenticate(r.Context(), secret)
	switch {
	case errors.Is(err, auth.ErrUnknown):
		c.metrics.signins.WithLabelValues(signinRefused).Inc()
		c.logger.Warn("sign-in refused: unknown or revoked token", zap.String("remote", r.RemoteAddr))
		c.showLogin(w, r, http.StatusUnauthorized, "unknown or revoked token")
		return
	case err != nil:
		c.metrics.signins.WithLabelValues(signinError).Inc()
		c.logger.Warn("cannot check a token at sign-in", zap.Error(err))
		c.showLogin(w, r, http.StatusServiceUnavailable, "cannot check the token: "+api.UnavailableMessage)
		return
	}
	now := c.o.Now()
	id, _, err := c.sess.add(secret, now, now.Add(c.o.TTL))
	if err != nil {
		c.logger.Error("cannot start a session", zap.Error(err))
		http.Error(w, "cannot start a session", http.StatusInternalServerError)
		return
	}
	c.metrics.signins.WithLabelValues(signinOK).Inc()
	c.logger.Info("signed in", zap.String("token", who.Name), zap.Stringer("scope", who.Scope))
	http.SetCookie(w, c.cookie(r, LoginCookie, "", -1))
	http.SetCookie(w, c.cookie(r, SessionCookie, id, int(c.o.TTL/time.Second)))
	http.Redirect(w, r, "/ui/", http.StatusSeeOther)
}

func (c *console) logout(w http.ResponseWriter, r *http.Request) {
	c.sess.drop(viewerOf(r).id)
	http.SetCookie(w, c.cookie(r, SessionCookie, "", -1))
	http.Redirect(w, r, "/ui/login", http.StatusSeeOther)
}
