package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"go.uber.org/zap"

	"github.com/berthhq/berth/scheduler/internal/auth"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// Route is a route of the API: its method and path pattern, and the token
// scope it needs; Public routes (probes, metrics) need no token.
type Route struct {
	Pattern string
	Scope   auth.Scope
	Public  bool
	// App: the route changes the app named by its {name}, which a deploy
	// token limited to apps must match (auth.Identity.MayChange).
	App bool
}

// router registers routes with the scope each needs, so that no route can
// be added without one: the scope is part of registering it, and Routes
// lists them for the test that checks every route.
type router struct {
	mux    *http.ServeMux
	guard  func(need auth.Scope, app bool, next http.HandlerFunc) http.HandlerFunc
	routes []Route
}

// handle registers a route that needs a token of scope need (or above).
func (rt *router) handle(pattern string, need auth.Scope, h http.HandlerFunc) {
	rt.routes = append(rt.routes, Route{Pattern: pattern, Scope: need})
	rt.mux.HandleFunc(pattern, rt.guard(need, false, h))
}

// handleApp registers a route that changes the app its {name} names: it
// needs a token of scope need whose apps (if it is limited to some)
// match that name.
func (rt *router) handleApp(pattern string, need auth.Scope, h http.HandlerFunc) {
	rt.routes = append(rt.routes, Route{Pattern: pattern, Scope: need, App: true})
	rt.mux.HandleFunc(pattern, rt.guard(need, true, h))
}

// public registers a route that needs no token.
func (rt *router) public(pattern string, h http.HandlerFunc) {
	rt.routes = append(rt.routes, Route{Pattern: pattern, Public: true})
	rt.mux.HandleFunc(pattern, h)
}

// guard admits a request whose bearer token has the scope need: 401
// without a valid token (unless the API is Open and the request gives
// none), 403 naming both scopes when the token's is too weak. The handler
// runs with the token's name as the actor of what it changes.
func (a *api) guard(need auth.Scope, app bool, next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, ok := a.identify(w, r)
		if !ok {
			return
		}
		if !id.Scope.Covers(need) {
			a.logger.Warn("request refused: the token's scope is too weak", zap.String("token", id.Name), zap.Stringer("scope", id.Scope),
				zap.Stringer("needs", need), zap.String("method", r.Method), zap.String("path", r.URL.Path))
			writeJSON(w, http.StatusForbidden, Error{Error: fmt.Sprintf("this needs the %s scope; token %s has %s", need, id.Name, id.Scope),
				NeededScope: need.String(), TokenScope: id.Scope.String()})
			return
		}
		if name := r.PathValue("name"); app && !id.MayChange(name) {
			verb := "change"
			if need == auth.Read {
				verb = "read the logs of"
			}
			a.logger.Warn("request refused: the token is limited to other apps", zap.String("token", id.Name), zap.String("app", name),
				zap.Strings("apps", id.Apps), zap.String("method", r.Method), zap.String("path", r.URL.Path))
			writeJSON(w, http.StatusForbidden, Error{Error: fmt.Sprintf("token %s may %s only the apps %s, not %s: an admin makes a token for it with scheduler tokens create --app",
				id.Name, verb, strings.Join(id.Apps, ", "), name), NeededScope: need.String(), TokenScope: id.Scope.String()})
			return
		}
		ctx := context.WithValue(store.WithActor(r.Context(), id.Name), identityKey{}, id)
		next(w, r.WithContext(ctx))
	}
}

// identityKey keys the request's identity in its context.
type identityKey struct{}

// mayReadLogs says whether the request's token may read what app's
// containers wrote (its logs, the log tails of its failures): a token
// limited to some apps only theirs, as another team's logs may hold what
// that team's app printed.
func mayReadLogs(ctx context.Context, app string) bool {
	id, ok := ctx.Value(identityKey{}).(auth.Identity)
	return ok && id.MayChange(app)
}

// identify returns who the request acts as, or answers 401 (or 503 when
// the tokens cannot be loaded to check an unknown one).
func (a *api) identify(w http.ResponseWriter, r *http.Request) (auth.Identity, bool) {
	hdr := r.Header.Get("Authorization")
	if hdr == "" && a.o.Open {
		return auth.Identity{Name: store.ActorAnonymous, Scope: auth.Admin}, true
	}
	secret, ok := strings.CutPrefix(hdr, "Bearer ")
	if !ok || secret == "" || a.o.Keyring == nil {
		unauthorized(w, "this API needs a bearer token: Authorization: Bearer <token> (the client's --token-file or BERTH_TOKEN; an admin makes one with scheduler tokens create)")
		return auth.Identity{}, false
	}
	id, err := a.o.Keyring.Authenticate(r.Context(), secret)
	switch {
	case errors.Is(err, auth.ErrUnknown):
		unauthorized(w, "unknown or revoked bearer token")
		return auth.Identity{}, false
	case err != nil:
		a.fail(w, err)
		return auth.Identity{}, false
	}
	return id, true
}

func unauthorized(w http.ResponseWriter, message string) {
	w.Header().Set("WWW-Authenticate", `Bearer realm="berth"`)
	writeJSON(w, http.StatusUnauthorized, Error{Error: message})
}
