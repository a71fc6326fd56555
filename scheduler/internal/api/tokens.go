package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/auth"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// TokenStore keeps the API tokens for /v1/tokens. Called concurrently.
type TokenStore interface {
	CreateToken(ctx context.Context, t store.Token) (store.Token, error)
	Tokens(ctx context.Context) ([]store.Token, error)
	RevokeToken(ctx context.Context, name string) (store.Token, error)
}

var _ TokenStore = (*store.Store)(nil)

// TokenRequest is the body of POST /v1/tokens.
type TokenRequest struct {
	Name  string `json:"name"`
	Scope string `json:"scope"`
	// Apps limits a deploy token to the apps matching these patterns.
	Apps []string `json:"apps,omitempty"`
}

// TokenView is a token as the API shows it: never its secret.
type TokenView struct {
	Name       string     `json:"name"`
	Scope      string     `json:"scope"`
	CreatedAt  time.Time  `json:"created_at"`
	CreatedBy  string     `json:"created_by"`
	RevokedAt  *time.Time `json:"revoked_at,omitempty"`
	LastUsedAt *time.Time `json:"last_used_at,omitempty"`
	Apps       []string   `json:"apps,omitempty"`
}

// NewToken is the answer to POST /v1/tokens: the token, shown this once.
type NewToken struct {
	TokenView
	Token string `json:"token"`
}

func tokenView(t store.Token) TokenView {
	v := TokenView{Name: t.Name, Scope: t.Scope, CreatedAt: t.CreatedAt, CreatedBy: t.CreatedBy, Apps: t.Apps}
	if !t.RevokedAt.IsZero() {
		v.RevokedAt = &t.RevokedAt
	}
	if !t.LastUsedAt.IsZero() {
		v.LastUsedAt = &t.LastUsedAt
	}
	return v
}

// registerTokens adds /v1/tokens: all of it admin, listing too, since
// who holds which scope is a map for an attacker.
func (a *api) registerTokens(rt *router) {
	rt.handle("POST /v1/tokens", auth.Admin, a.createToken)
	rt.handle("GET /v1/tokens", auth.Admin, a.listTokens)
	rt.handle("DELETE /v1/tokens/{name}", auth.Admin, a.revokeToken)
}

func (a *api) createToken(w http.ResponseWriter, r *http.Request) {
	body, ok := readBody(w, r)
	if !ok {
		return
	}
	var req TokenRequest
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		a.fail(w, spec.Errors{{Path: "", Message: fmt.Sprintf(`not a token request: %s (e.g. {"name": "ci", "scope": "deploy"})`, msg.Truncate(err.Error(), 200))}})
		return
	}
	var es spec.Errors
	es.Check("name", auth.CheckName(req.Name))
	scope, err := auth.ParseScope(req.Scope)
	es.Check("scope", err)
	if err == nil {
		es.Check("apps", auth.CheckApps(scope, req.Apps))
	}
	if err := es.Err(); err != nil {
		a.fail(w, err)
		return
	}
	secret, hash, err := auth.New(nil)
	if err != nil {
		a.fail(w, err)
		return
	}
	t, err := a.d.Tokens.CreateToken(r.Context(), store.Token{Name: req.Name, Scope: scope.String(), Hash: hash, Apps: req.Apps})
	if err != nil {
		a.fail(w, err)
		return
	}
	a.logger.Info("api token created", zap.String("token", t.Name), zap.String("scope", t.Scope), zap.Strings("apps", t.Apps), zap.String("by", t.CreatedBy))
	writeJSON(w, http.StatusCreated, NewToken{TokenView: tokenView(t), Token: secret})
}

func (a *api) listTokens(w http.ResponseWriter, r *http.Request) {
	ts, err := a.d.Tokens.Tokens(r.Context())
	if err != nil {
		a.fail(w, err)
		return
	}
	out := make([]TokenView, 0, len(ts))
	for _, t := range ts {
		out = append(out, tokenView(t))
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *api) revokeToken(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if name == store.ActorBootstrap {
		a.fail(w, spec.Errors{{Path: "name", Message: "bootstrap is the --api-token-file token: to change it, replace the file on every replica and restart them"}})
		return
	}
	if err := auth.CheckName(name); err != nil {
		a.fail(w, spec.Errors{{Path: "name", Message: err.Error()}})
		return
	}
	t, err := a.d.Tokens.RevokeToken(r.Context(), name)
	if err != nil {
		a.fail(w, err)
		return
	}
	// This replica refuses the token once the answer is sent; the others
	// on the revoke's NOTIFY (auth.DefaultRefresh at worst).
	if a.o.Keyring != nil {
		if err := a.o.Keyring.Reload(r.Context()); err != nil {
			a.logger.Warn("could not reload the API tokens after a revoke", zap.String("token", name), zap.Error(err))
		}
	}
	a.logger.Info("api token revoked", zap.String("token", t.Name), zap.String("by", store.ActorOf(r.Context())))
	writeJSON(w, http.StatusOK, tokenView(t))
}
