package bus

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha512"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"

	"filippo.io/edwards25519"
	"github.com/nats-io/nkeys"
	"golang.org/x/crypto/nacl/box"

	"github.com/berthhq/berth/common/msg"
)

// Sealed boxes carry a secret (an ACME certificate's private key) on NATS
// to one role only. The secret is sealed once to each of the role's
// trusted public keys, as an anonymous NaCl box (X25519, XSalsa20-Poly1305,
// libsodium's crypto_box_seal) to the Montgomery form of the Ed25519 nkey.
// So the credentials a daemon already has are the whole key material: the
// sender needs the trust lines, the recipient its own seed. Using one
// Ed25519 key for signatures and, converted, for X25519 is the construction
// age's ssh-ed25519 recipients use; it is sound for these two primitives.

// ErrNotARecipient is a box none of whose keys is this daemon's.
var ErrNotARecipient = errors.New("bus: sealed to other keys")

// SealTo seals secret to every trusted key of role (its trust lines).
func (k *Keys) SealTo(role string, secret []byte) ([]msg.SealedKey, error) {
	if k == nil {
		return nil, errors.New("bus: no keys to seal to: connect with a Berth role credential (--nats-nkey)")
	}
	return sealTo(role, k.trust[role], secret)
}

// sealTo seals secret to each of pubs, once each.
func sealTo(role string, pubs []ed25519.PublicKey, secret []byte) ([]msg.SealedKey, error) {
	if len(pubs) == 0 {
		return nil, fmt.Errorf("bus: no trusted key of the %s role to seal to", role)
	}
	out := make([]msg.SealedKey, 0, len(pubs))
	seen := map[string]bool{}
	for _, pub := range pubs {
		if seen[string(pub)] {
			continue
		}
		seen[string(pub)] = true
		mont, err := montgomery(pub)
		if err != nil {
			return nil, err
		}
		sealed, err := box.SealAnonymous(nil, secret, mont, rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("bus: seal: %w", err)
		}
		to, err := nkeys.Encode(nkeys.PrefixByteUser, pub)
		if err != nil {
			return nil, err
		}
		out = append(out, msg.SealedKey{To: string(to), Box: base64.StdEncoding.EncodeToString(sealed)})
	}
	return out, nil
}

// OpenSealed opens the box of boxes sealed to this daemon's own key.
func (k *Keys) OpenSealed(boxes []msg.SealedKey) ([]byte, error) {
	if k == nil {
		return nil, errors.New("bus: no keys to open with: connect with a Berth role credential (--nats-nkey)")
	}
	own, err := k.publicNKey()
	if err != nil {
		return nil, err
	}
	for _, b := range boxes {
		if b.To != own {
			continue
		}
		sealed, err := base64.StdEncoding.DecodeString(b.Box)
		if err != nil {
			return nil, fmt.Errorf("bus: sealed box: %w", err)
		}
		pub, err := montgomery(k.signer.Public().(ed25519.PublicKey))
		if err != nil {
			return nil, err
		}
		priv := x25519Private(k.signer)
		defer wipe(priv[:])
		out, ok := box.OpenAnonymous(nil, sealed, pub, priv)
		if !ok {
			return nil, errors.New("bus: sealed box does not open with this key: altered, or sealed to another")
		}
		return out, nil
	}
	return nil, fmt.Errorf("%w: none of the %d is %s", ErrNotARecipient, len(boxes), own)
}

// publicNKey is this daemon's public nkey, "U…".
func (k *Keys) publicNKey() (string, error) {
	b, err := nkeys.Encode(nkeys.PrefixByteUser, k.signer.Public().(ed25519.PublicKey))
	return string(b), err
}

// montgomery is the X25519 public key of an Ed25519 public key.
func montgomery(pub ed25519.PublicKey) (*[32]byte, error) {
	p, err := new(edwards25519.Point).SetBytes(pub)
	if err != nil {
		return nil, fmt.Errorf("bus: not an ed25519 public key: %w", err)
	}
	var out [32]byte
	copy(out[:], p.BytesMontgomery())
	return &out, nil
}

// x25519Private is the X25519 private key of an Ed25519 private key: the
// scalar Ed25519 derives from its seed (RFC 8032, 5.1.5), which X25519
// clamps as Ed25519 does.
func x25519Private(priv ed25519.PrivateKey) *[32]byte {
	h := sha512.Sum512(priv.Seed())
	defer wipe(h[:])
	var out [32]byte
	copy(out[:], h[:32])
	return &out
}

// SealTo seals secret to every trusted key of role with the connection's
// record keys (Keys.SealTo); without keys it is an error. For the lbagent
// role, with a NodeDirectory, that is also every key of every node in the
// directory, and an error (ErrNodesLoading) until it has loaded: a secret
// sealed before would not open on the nodes with keys of their own.
func (c *Conn) SealTo(role string, secret []byte) ([]msg.SealedKey, error) {
	if c.seals == nil {
		return (*Keys)(nil).SealTo(role, secret)
	}
	t := c.seals.nodes.Load()
	if role != RoleLBAgent || t == nil {
		return c.seals.keys.SealTo(role, secret)
	}
	nodes, loaded := t.keysFor("", false)
	if !loaded {
		return nil, fmt.Errorf("seal to the %s role: %w", role, ErrNodesLoading)
	}
	return sealTo(role, append(slices.Clip(c.seals.keys.trust[role]), nodes...), secret)
}

// Keys returns the connection's record keys, nil without them.
func (c *Conn) Keys() *Keys {
	if c.seals == nil {
		return nil
	}
	return c.seals.keys
}

// Node returns the lbagent node whose own key the connection's credential
// holds (Keys.Node), or "".
func (c *Conn) Node() string { return c.Keys().Node() }

// OpenSealed opens the box of boxes sealed to the connection's own key.
func (c *Conn) OpenSealed(boxes []msg.SealedKey) ([]byte, error) {
	if c.seals == nil {
		return (*Keys)(nil).OpenSealed(boxes)
	}
	return c.seals.keys.OpenSealed(boxes)
}
