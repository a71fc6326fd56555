// Package auth owns the scheduler API's tokens: their scopes (read,
// deploy, admin), their format and names, and the Keyring that every
// replica checks bearer tokens against. A token is "berth_" and 32 random
// bytes in base64url; Postgres keeps only its SHA-256, and a replica
// holds the hashes of every valid token in memory, so a request costs no
// query. A revoke reaches every replica by NOTIFY at once, and by a
// periodic reload at worst (Config.Refresh).
package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"io"
	"path"
	"strings"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// Scope is what a token may do. Each scope includes the ones below it.
// The zero Scope is no scope: it covers nothing and nothing requires it.
type Scope int

// The scopes, weakest first.
const (
	// Read may GET everything.
	Read Scope = iota + 1
	// Deploy may also apply, scale, roll back and delete apps.
	Deploy
	// Admin may also register hosts and manage tokens.
	Admin
)

var scopeNames = map[Scope]string{Read: "read", Deploy: "deploy", Admin: "admin"}

// String returns the scope's name ("read", "deploy", "admin"), "none" for
// the zero Scope.
func (s Scope) String() string {
	if n, ok := scopeNames[s]; ok {
		return n
	}
	return "none"
}

// Valid says whether s is one of Read, Deploy and Admin.
func (s Scope) Valid() bool { _, ok := scopeNames[s]; return ok }

// Covers says whether a token of scope s may do what needs need. An
// invalid scope, held or needed, covers nothing: a route registered
// without a scope is refused to everyone.
func (s Scope) Covers(need Scope) bool { return s.Valid() && need.Valid() && s >= need }

// ParseScope parses a scope's name.
func ParseScope(name string) (Scope, error) {
	for s, n := range scopeNames {
		if n == name {
			return s, nil
		}
	}
	return 0, fmt.Errorf("%q is not a scope: read (every GET), deploy (read, and apply, scale, rollback and delete apps) or admin (deploy, and hosts and tokens)",
		msg.Truncate(name, 32))
}

// Identity is who a request acts as: the token's name and scope, and the
// apps it may change (Apps, patterns; none: every app).
type Identity struct {
	Name  string
	Scope Scope
	Apps  []string
}

// MaxAppPatterns bounds a token's apps.
const MaxAppPatterns = 32

// MayChange says whether the identity may change app: its Apps are empty,
// or one of them matches app's name.
func (id Identity) MayChange(app string) bool {
	if len(id.Apps) == 0 {
		return true
	}
	for _, p := range id.Apps {
		if ok, _ := path.Match(p, app); ok {
			return true
		}
	}
	return false
}

// CheckApps checks the app patterns of a token of scope s: only a deploy
// token is limited to apps (a read token reads everything, an admin token
// manages hosts and tokens, which no app pattern bounds); each pattern is
// an app name that may hold '*' (lower-case letters, digits, '-', '*').
func CheckApps(s Scope, apps []string) error {
	if len(apps) == 0 {
		return nil
	}
	if s != Deploy {
		return fmt.Errorf("only a deploy token is limited to apps: a %s token is not", s)
	}
	if len(apps) > MaxAppPatterns {
		return fmt.Errorf("has %d patterns; at most %d", len(apps), MaxAppPatterns)
	}
	for _, p := range apps {
		if err := spec.CheckName(strings.ReplaceAll(p, "*", "a")); err != nil || len(p) > spec.MaxNameLen {
			return fmt.Errorf("%q is not an app pattern: an app name in which '*' stands for any characters (shop, shop-*)", msg.Truncate(p, 64))
		}
	}
	return nil
}

// Prefix starts every token Berth makes, so that secret scanners can
// recognise a leaked one (berth_ and 43 base64url characters).
const Prefix = "berth_"

// secretBytes is the entropy of a token: 256 bits, so that a plain
// SHA-256 of it is as good a stored form as a slow password hash.
const secretBytes = 32

var (
	tokenLen     = len(Prefix) + base64.RawURLEncoding.EncodedLen(secretBytes)
	strictBase64 = base64.RawURLEncoding.Strict()
)

// New returns a new token (Prefix and 32 random bytes from r, crypto/rand
// when nil) and its hash.
func New(r io.Reader) (secret string, hash [32]byte, err error) {
	if r == nil {
		r = rand.Reader
	}
	b := make([]byte, secretBytes)
	if _, err := io.ReadFull(r, b); err != nil {
		return "", hash, fmt.Errorf("new token: read random bytes: %w", err)
	}
	secret = Prefix + base64.RawURLEncoding.EncodeToString(b)
	return secret, Hash(secret), nil
}

// Hash returns what is stored of a token: its SHA-256.
func Hash(secret string) [32]byte { return sha256.Sum256([]byte(secret)) }

// WellFormed says whether secret has the form of a token New makes.
func WellFormed(secret string) bool {
	if len(secret) != tokenLen || !strings.HasPrefix(secret, Prefix) {
		return false
	}
	var b [secretBytes]byte
	n, err := strictBase64.Decode(b[:], []byte(secret[len(Prefix):]))
	return err == nil && n == secretBytes
}

// CheckName checks a token's name: a DNS label that is none of the actors
// the scheduler records for itself (store.ActorScheduler, …), so that no
// token can pass its changes off as the scheduler's.
func CheckName(name string) error {
	if len(name) > spec.MaxNameLen {
		return fmt.Errorf("a token name has at most %d characters (a DNS label), not %d", spec.MaxNameLen, len(name))
	}
	if err := spec.CheckName(name); err != nil {
		return err
	}
	switch name {
	case store.ActorScheduler, store.ActorAutoscaler, store.ActorBootstrap, store.ActorAnonymous:
		return fmt.Errorf("%q is reserved: events name it for the scheduler itself, the --api-token-file token or an open loopback API; pick another name", name)
	}
	return nil
}
