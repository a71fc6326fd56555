package certs

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
)

// Vault encrypts the private keys the scheduler keeps in Postgres (each
// certificate's and the ACME account's) with one AES-256-GCM key read from
// a file (--cert-key-file). A sealed value is
//
//	1 (version) | key id (4 bytes) | nonce (12) | ciphertext and tag
//
// with the row it belongs to as associated data, so a value moved to
// another row does not open; the key id names the key that sealed it, so
// a wrong --cert-key-file is an error that says so, not garbage.
type Vault struct {
	aead cipher.AEAD
	id   [4]byte
}

const vaultVersion = 1

// ErrWrongKey is a value sealed with another key than the vault's.
var ErrWrongKey = errors.New("certs: sealed with another --cert-key-file key")

// LoadVault reads the key file at path: 32 random bytes in standard
// base64 (`openssl rand -base64 32`), mode 0600 or stricter.
func LoadVault(path string) (*Vault, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("--cert-key-file: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("--cert-key-file %s has mode %04o: it must be readable by its owner only (chmod 600 %s)", path, st.Mode().Perm(), path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--cert-key-file: %w", err)
	}
	key, err := base64.StdEncoding.DecodeString(string(bytes.TrimSpace(b)))
	clear(b)
	if err != nil || len(key) != 32 {
		return nil, fmt.Errorf("--cert-key-file %s: want 32 random bytes in base64 (openssl rand -base64 32 > %s)", path, path)
	}
	return NewVault(key)
}

// NewVault returns a vault with a 32-byte key.
func NewVault(key []byte) (*Vault, error) {
	if len(key) != 32 {
		return nil, fmt.Errorf("certs: vault key has %d bytes, want 32", len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	v := &Vault{aead: aead}
	sum := sha256.Sum256(append([]byte("berth cert-key-file id\x00"), key...))
	copy(v.id[:], sum[:])
	return v, nil
}

// ID is the key's id, as sealed values carry it (hex).
func (v *Vault) ID() string { return hex.EncodeToString(v.id[:]) }

// Seal encrypts plain for the row named by aad.
func (v *Vault) Seal(plain []byte, aad string) ([]byte, error) {
	out := make([]byte, 1+len(v.id)+v.aead.NonceSize(), 1+len(v.id)+v.aead.NonceSize()+len(plain)+v.aead.Overhead())
	out[0] = vaultVersion
	copy(out[1:], v.id[:])
	if _, err := rand.Read(out[1+len(v.id):]); err != nil {
		return nil, err
	}
	return v.aead.Seal(out, out[1+len(v.id):], plain, []byte(aad)), nil
}

// Open decrypts sealed for the row named by aad.
func (v *Vault) Open(sealed []byte, aad string) ([]byte, error) {
	head := 1 + len(v.id) + v.aead.NonceSize()
	if len(sealed) < head+v.aead.Overhead() || sealed[0] != vaultVersion {
		return nil, errors.New("certs: not a sealed key")
	}
	if !bytes.Equal(sealed[1:1+len(v.id)], v.id[:]) {
		return nil, fmt.Errorf("%w: it was sealed with key id %x, this is %s", ErrWrongKey, sealed[1:1+len(v.id)], v.ID())
	}
	plain, err := v.aead.Open(nil, sealed[1+len(v.id):head], sealed[head:], []byte(aad))
	if err != nil {
		return nil, fmt.Errorf("certs: sealed key does not open for %s: altered, or moved from another row", aad)
	}
	return plain, nil
}
