// Package secret owns env secrets at rest. It seals the secrets of a spec
// as it is applied (keeping the stored sealed value of a secret whose
// plaintext did not change, so an unchanged re-apply changes nothing),
// opens them for the container the leader creates, gives the spec hash a
// view of them that holds nothing derived from the plaintext, and seals
// stored specs again after a key rotation or after a variable was first
// marked secret. It seals with vault's scheme (--secret-key-file), bound
// to the app and the variable's name, so a sealed value moved to another
// app or name does not open. No error or log line here holds a value.
package secret

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"

	"go.uber.org/zap"

	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/vault"
)

// Flag is the scheduler option that names the key file.
const Flag = "--secret-key-file"

// ErrNoKey is a secret to seal or open on a scheduler without a key.
var ErrNoKey = errors.New("secret: this scheduler has no " + Flag)

// Box seals and opens env secrets with a key ring. A nil ring is a
// scheduler without --secret-key-file: it refuses every secret, and
// specs without one pass. Safe for concurrent use.
type Box struct {
	ring   *vault.Ring
	logger *zap.Logger
}

// New returns a box that seals with ring's current key and opens with any
// of its keys; ring may be nil.
func New(ring *vault.Ring, logger *zap.Logger) *Box {
	return &Box{ring: ring, logger: logger.Named("secret")}
}

// KeyID is the id of the key that seals, "" without one.
func (b *Box) KeyID() string {
	if b.ring == nil {
		return ""
	}
	return b.ring.ID()
}

// aad binds a sealed value to its app and variable; neither name can hold
// a space, and the prefix keeps it apart from the certificate keys a
// shared key file also seals.
func aad(app, name string) string { return "env secret " + app + " " + name }

func newValueID() (string, error) {
	b := make([]byte, spec.ValueIDLen)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("secret: value id: %w", err)
	}
	return hex.EncodeToString(b), nil
}

func (b *Box) seal(app, name string, plain []byte, id string) (spec.EnvValue, error) {
	box, err := b.ring.Seal(plain, aad(app, name))
	if err != nil {
		return spec.EnvValue{}, fmt.Errorf("secret: seal env %s of %s: %w", name, app, err)
	}
	return spec.EnvValue{Sealed: &spec.Sealed{Box: box, ValueID: id}}, nil
}

// Seal replaces every secret of next that is still plaintext with its
// sealed form. cur is the stored spec of the same app (nil for a new one):
// where its secret of the same name opens to the same plaintext, next
// keeps cur's sealed value and value id, so the two specs compare equal
// and no container restarts. Without a key, each secret is a problem at
// its field path that names the flag.
func (b *Box) Seal(next, cur *spec.App) error {
	names := next.Unsealed()
	if len(names) == 0 {
		return nil
	}
	if b.ring == nil {
		var es spec.Errors
		for _, n := range names {
			es.Add(spec.Join(spec.Key("env", n), "secret"), "this scheduler keeps no secrets: it has no %s to encrypt them with in Postgres; "+
				"start every scheduler replica with the same %s (docs/scheduler.md), or make the value plain", Flag, Flag)
		}
		return es
	}
	for _, n := range names {
		plain := []byte(*next.Env[n].Secret)
		if kept, ok := b.same(next.Name, n, plain, cur); ok {
			next.Env[n] = kept
			continue
		}
		id, err := newValueID()
		if err != nil {
			return err
		}
		v, err := b.seal(next.Name, n, plain, id)
		if err != nil {
			return err
		}
		next.Env[n] = v
	}
	return nil
}

// same returns cur's sealed value of name when it opens to plain.
func (b *Box) same(app, name string, plain []byte, cur *spec.App) (spec.EnvValue, bool) {
	if cur == nil || cur.Name != app {
		return spec.EnvValue{}, false
	}
	old, ok := cur.Env[name]
	if !ok || old.Sealed == nil {
		return spec.EnvValue{}, false
	}
	was, err := b.ring.Open(old.Sealed.Box, aad(app, name))
	if err != nil {
		b.logger.Warn("a stored secret does not open, so the applied value is sealed anew and the app rolls out; "+
			"give every replica the key that sealed it as --secret-old-key-file", zap.String("app", app), zap.String("env", name), zap.Error(err))
		return spec.EnvValue{}, false
	}
	defer clear(was)
	if subtle.ConstantTimeCompare(was, plain) != 1 {
		return spec.EnvValue{}, false
	}
	s := *old.Sealed
	return spec.EnvValue{Sealed: &s}, true
}

// Env returns the environment of app's containers from its spec's env:
// plain values as they are, sealed secrets opened. It is called by the
// leader only, to create a container. An error names the variable and
// the key, never a value.
func (b *Box) Env(app string, env map[string]spec.EnvValue) (map[string]string, error) {
	out := make(map[string]string, len(env))
	var errs []error
	for _, n := range sortedKeys(env) {
		v := env[n]
		switch {
		case v.Sealed != nil && b.ring == nil:
			errs = append(errs, fmt.Errorf("env %s is a secret, and %w: start every replica with the %s that sealed it", n, ErrNoKey, Flag))
		case v.Sealed != nil:
			plain, err := b.ring.Open(v.Sealed.Box, aad(app, n))
			if err != nil {
				errs = append(errs, fmt.Errorf("env %s: %w", n, err))
				continue
			}
			out[n] = string(plain)
			clear(plain)
		case v.Secret != nil:
			errs = append(errs, fmt.Errorf("env %s: a secret was stored unsealed; apply the spec again", n))
		default:
			out[n] = v.Value
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("secret: %w", errors.Join(errs...))
	}
	return out, nil
}

// HashEnv is env as the container spec hash sees it: plain values as they
// are, a sealed secret as its value id (which changes exactly when its
// value does), never anything derived from a secret's plaintext. A plain
// value holds no NUL byte, so it never equals a secret's entry.
func HashEnv(env map[string]spec.EnvValue) map[string]string {
	out := make(map[string]string, len(env))
	for n, v := range env {
		switch {
		case v.Sealed != nil:
			out[n] = "\x00sealed " + v.Sealed.ValueID
		case v.Secret != nil:
			out[n] = "\x00unsealed"
		default:
			out[n] = v.Value
		}
	}
	return out
}

// Resealer returns what brings an earlier stored spec of the app whose
// spec is current up to date, in place, and how many values it sealed:
//   - a plain value of a variable that current marks secret is sealed: as
//     current's sealed value when it is current's value, and otherwise as
//     one sealed value per distinct value, so two generations that agree
//     on it still compare equal (rollback skips the same spec, and
//     restarts nothing);
//   - with rotate, a secret sealed under an older key of the ring is
//     sealed again under the current key, keeping its value id, so
//     nothing restarts; equal values stay equal.
//
// Give it current itself first, when current is to be brought up to date
// too. A value that does not open is left as it is and reported in the
// error; the others are still sealed. Not safe for concurrent use; the
// plaintexts it holds to compare values live as long as it does.
func (b *Box) Resealer(current *spec.App, rotate bool) func(old *spec.App) (int, error) {
	marked := map[string]bool{}
	for _, n := range current.Secrets() {
		marked[n] = true
	}
	// byValue is the sealed value a marked plain value becomes, by name and
	// plaintext; byID what a rotated value becomes, by name, value id and
	// plaintext.
	byValue, byID := map[string]spec.Sealed{}, map[string]spec.Sealed{}
	remember := func(name string, plain []byte, s spec.Sealed) {
		kv := name + "\x00" + string(plain)
		if _, ok := byValue[kv]; !ok {
			byValue[kv] = s
		}
		byID[name+"\x00"+s.ValueID+"\x00"+string(plain)] = s
	}
	if b.ring != nil {
		for n := range marked {
			if v := current.Env[n]; v.Sealed != nil && b.ring.Current(v.Sealed.Box) {
				if plain, err := b.ring.Open(v.Sealed.Box, aad(current.Name, n)); err == nil {
					remember(n, plain, *v.Sealed)
					clear(plain)
				}
			}
		}
	}
	// next is what the value of name that opened to plain (with value id
	// id, "" for a plain value) becomes.
	next := func(name string, plain []byte, id string) (spec.Sealed, error) {
		if s, ok := byValue[name+"\x00"+string(plain)]; ok && id == "" {
			return s, nil
		}
		if s, ok := byID[name+"\x00"+id+"\x00"+string(plain)]; ok && id != "" {
			return s, nil
		}
		if id == "" {
			var err error
			if id, err = newValueID(); err != nil {
				return spec.Sealed{}, err
			}
		}
		v, err := b.seal(current.Name, name, plain, id)
		if err != nil {
			return spec.Sealed{}, err
		}
		remember(name, plain, *v.Sealed)
		return *v.Sealed, nil
	}
	return func(old *spec.App) (int, error) {
		if b.ring == nil {
			return 0, nil
		}
		n, errs := 0, []error(nil)
		for _, name := range sortedKeys(old.Env) {
			v := old.Env[name]
			var plain []byte
			var id string
			switch {
			case !v.IsSecret() && marked[name]:
				plain = []byte(v.Value)
			case v.Sealed != nil && rotate && !b.ring.Current(v.Sealed.Box):
				p, err := b.ring.Open(v.Sealed.Box, aad(current.Name, name))
				if err != nil {
					errs = append(errs, fmt.Errorf("env %s: %w", name, err))
					continue
				}
				plain, id = p, v.Sealed.ValueID
			default:
				continue
			}
			s, err := next(name, plain, id)
			clear(plain)
			if err != nil {
				return n, err
			}
			old.Env[name] = spec.EnvValue{Sealed: &s}
			n++
		}
		return n, errors.Join(errs...)
	}
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
