// Package vault owns the scheduler's encryption at rest: AES-256-GCM with
// one key read from a file, sealed values that name the key that sealed
// them, and associated data that binds each value to where it is stored.
// The certificate manager seals private keys with it (--cert-key-file),
// and env secrets are sealed with it (--secret-key-file). A Ring adds the
// older keys of a rotation, which open what they sealed while the current
// key seals.
package vault

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
)

// Vault seals with one AES-256-GCM key. A sealed value is
//
//	1 (version) | key id (4 bytes) | nonce (12) | ciphertext and tag
//
// with the place it belongs to (a row, an app's variable) as associated
// data, so a value moved elsewhere does not open; the key id names the key
// that sealed it, so a wrong key file is an error that says so, not
// garbage. A Vault is safe for concurrent use.
type Vault struct {
	aead cipher.AEAD
	id   [idLen]byte
	// flag names the key's file in errors (--cert-key-file).
	flag string
}

const (
	version = 1
	idLen   = 4
)

// Errors of Open.
var (
	// ErrWrongKey is a value sealed with another key than the vault's (or
	// than any of a ring's).
	ErrWrongKey = errors.New("vault: sealed with another key")
	// ErrNotSealed is a value that is not a sealed value at all.
	ErrNotSealed = errors.New("vault: not a sealed value")
)

// Load reads the key file at path: 32 random bytes in standard base64
// (`openssl rand -base64 32`), mode 0600 or stricter. flag is the option
// that named the file (--cert-key-file), for errors.
func Load(path, flag string) (*Vault, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", flag, err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s %s has mode %04o: it must be readable by its owner only (chmod 600 %s)", flag, path, st.Mode().Perm(), path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", flag, err)
	}
	key, err := base64.StdEncoding.DecodeString(string(bytes.TrimSpace(b)))
	clear(b)
	if err != nil || len(key) != 32 {
		return nil, fmt.Errorf("%s %s: want 32 random bytes in base64 (openssl rand -base64 32 > %s)", flag, path, path)
	}
	defer clear(key)
	v, err := New(key)
	if err != nil {
		return nil, err
	}
	v.flag = flag
	return v, nil
}

// New returns a vault with a 32-byte key.
func New(key []byte) (*Vault, error) {
	if len(key) != 32 {
		return nil, fmt.Errorf("vault: key has %d bytes, want 32", len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	v := &Vault{aead: aead, flag: "key"}
	// The id's derivation is that of the first stored values (certificate
	// keys under --cert-key-file): changing it would make them all "sealed
	// with another key".
	sum := sha256.Sum256(append([]byte("berth cert-key-file id\x00"), key...))
	copy(v.id[:], sum[:])
	return v, nil
}

// ID is the key's id, as sealed values carry it (hex).
func (v *Vault) ID() string { return hex.EncodeToString(v.id[:]) }

// Seal encrypts plain for the place named by aad.
func (v *Vault) Seal(plain []byte, aad string) ([]byte, error) {
	out := make([]byte, 1+idLen+v.aead.NonceSize(), 1+idLen+v.aead.NonceSize()+len(plain)+v.aead.Overhead())
	out[0] = version
	copy(out[1:], v.id[:])
	if _, err := rand.Read(out[1+idLen:]); err != nil {
		return nil, err
	}
	return v.aead.Seal(out, out[1+idLen:], plain, []byte(aad)), nil
}

// Open decrypts sealed for the place named by aad.
func (v *Vault) Open(sealed []byte, aad string) ([]byte, error) {
	id, ok := KeyID(sealed)
	if !ok || len(sealed) < 1+idLen+v.aead.NonceSize()+v.aead.Overhead() {
		return nil, ErrNotSealed
	}
	if id != v.ID() {
		return nil, fmt.Errorf("%w: it was sealed with key id %s, this %s is %s", ErrWrongKey, id, v.flag, v.ID())
	}
	head := 1 + idLen + v.aead.NonceSize()
	plain, err := v.aead.Open(nil, sealed[1+idLen:head], sealed[head:], []byte(aad))
	if err != nil {
		return nil, fmt.Errorf("vault: sealed value does not open for %s: altered, or moved from another row", aad)
	}
	return plain, nil
}

// KeyID returns the id of the key that sealed a value (hex), and whether
// it looks like a sealed value at all.
func KeyID(sealed []byte) (string, bool) {
	if len(sealed) < 1+idLen || sealed[0] != version {
		return "", false
	}
	return hex.EncodeToString(sealed[1 : 1+idLen]), true
}

// Ring is a current key, which seals, and older keys of a rotation, which
// only open what they sealed. Safe for concurrent use.
type Ring struct {
	current *Vault
	byID    map[string]*Vault
}

// NewRing returns a ring that seals with current and opens with it or
// any of old. An old key equal to current is allowed (and ignored), so
// the same file may be given as both during a rotation.
func NewRing(current *Vault, old ...*Vault) *Ring {
	r := &Ring{current: current, byID: map[string]*Vault{current.ID(): current}}
	for _, v := range old {
		if _, ok := r.byID[v.ID()]; !ok {
			r.byID[v.ID()] = v
		}
	}
	return r
}

// ID is the id of the current key.
func (r *Ring) ID() string { return r.current.ID() }

// Current reports whether sealed was sealed with the current key.
func (r *Ring) Current(sealed []byte) bool {
	id, ok := KeyID(sealed)
	return ok && id == r.current.ID()
}

// Seal encrypts plain with the current key for the place named by aad.
func (r *Ring) Seal(plain []byte, aad string) ([]byte, error) { return r.current.Seal(plain, aad) }

// Open decrypts sealed with the key whose id it carries.
func (r *Ring) Open(sealed []byte, aad string) ([]byte, error) {
	id, ok := KeyID(sealed)
	if !ok {
		return nil, ErrNotSealed
	}
	v, ok := r.byID[id]
	if !ok {
		ids := make([]string, 0, len(r.byID))
		for k := range r.byID {
			ids = append(ids, k)
		}
		sort.Strings(ids)
		return nil, fmt.Errorf("%w: it was sealed with key id %s, and this scheduler has key ids %s (current %s)",
			ErrWrongKey, id, strings.Join(ids, ", "), r.current.ID())
	}
	return v.Open(sealed, aad)
}
