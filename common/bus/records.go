package bus

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/berthhq/berth/common/msg"
	"github.com/nats-io/nkeys"
)

// Sealed records. Subject permissions cannot stop one thing: the server
// itself writes, into any subject of the account, the reply to a JetStream
// API request and every delivery of a push consumer, and the client that
// asked chooses where (see Permissions). So any role that may read a bucket
// can have the server store an API response, or a copy of a stored value or
// delete marker, under any key of any bucket. What such a copy cannot carry
// is a valid signature of the role that owns the bucket for that bucket,
// that key and that operation. So every value a daemon writes, and every
// message it publishes, is sealed with its role's key, and a daemon that
// holds the roles' public keys (its credential's trust lines) acts on
// nothing that is not sealed by the owner: a forged put or delete is
// dropped and counted like an undecodable value.
//
// A seal is the last member of the JSON object, so readers that do not
// verify see one more field:
//
//	{…,"seal":"<at: 16 hex digits>.<ed25519 signature: 86 base64url>"}
//
// The signature covers these, joined by newlines: "berth-seal-v1", the
// kind ("kv" or "msg"), the bucket or subject, the key ("" for a message),
// the operation ("put", "del" or "msg"), the 16 hex digits of at (Unix
// nanoseconds, strictly increasing per writer), then the object without its
// seal. A delete is a KV delete marker whose body is the sealed object
// {"op":"delete"}, so NATS tools still see a delete.
//
// When a seal is too new or too old. A seal proves who wrote a value for
// which key, not when: any role can have the server copy a sealed value
// away (into a key of another bucket, where it is refused but stored) and
// later copy it back onto its own key, after its owner deleted or changed
// it. Three rules bound what such a copy can do (docs/nats.md, Sealed
// records):
//
//   - at is below 2^63 and at most sealAhead (5 minutes) after the
//     reader's clock. A value sealed further ahead (a writer whose clock is
//     wrong, or a stolen key) would otherwise outrank every later value of
//     its key until that time. The writer's floor ignores such ats (open
//     refuses them before it notes them) and nextAt never seals beyond the
//     writer's clock plus sealAhead, so nothing overflows.
//   - A stored value is a copy, and refused, when it was sealed more than
//     copyAge (5 minutes) before the server stored it (and before the
//     reader's clock now, so that a NATS server whose clock runs ahead
//     does not make every fresh write a copy). The stored time is
//     the stream's timestamp of the message, which the server sets when it
//     stores it and no client chooses: a copy made now of a value sealed
//     earlier carries both, and the gap is its age. An owner's own write is
//     stored milliseconds after it is sealed. So a stash goes stale copyAge
//     after it was sealed, whether or not the owner writes anything since,
//     and a value its owner wrote long ago is never stale: the rule compares
//     two clocks at the moment the value was stored, not the reader's clock
//     now. A reader that starts while the scheduler or healthd has been
//     down for an hour takes every value they left; one that starts while
//     the scheduler comes back and writes everything again takes the values
//     not yet written again as well (a rule measured against the owner's
//     newest seal would drop those).
//   - Within copyAge, a running reader refuses a value sealed before the
//     one its key already has, and keeps a deleted key's at as a tombstone
//     for 10 minutes; a tombstone it must forget sooner (more than 16,384:
//     junk keys, each deleted by the guard) raises a floor below which it
//     takes no key it does not know (sealFence). And each owner writes
//     again at once any key of its buckets whose last value it refused (the
//     scheduler's guard, healthd's repair), so a reader that starts within
//     copyAge of a replay holds it only until that repair arrives.
//
// Owners also write every key again periodically (the scheduler at each
// --resync, healthd at each --refresh, lbagent at each heartbeat): that
// brings back a value a reader refused wrongly (a floor it fell under, a
// clock out of bounds). Messages are not stored: only the bound ahead
// applies to them.

// Errors of sealed records.
var (
	// ErrUnsealed is a value or message that carries no seal where one is required.
	ErrUnsealed = errors.New("bus: not sealed by its owner")
	// ErrBadSeal is a seal that does not verify against the owner's keys.
	ErrBadSeal = errors.New("bus: seal does not verify")
	// ErrReplayed is a sealed value older than the one its key already
	// has, or a copy: stored long after it was sealed.
	ErrReplayed = errors.New("bus: replayed")
	// ErrSealAhead is a seal whose at is beyond what a reader accepts: more
	// than 5 minutes after its clock, or at least 2^63.
	ErrSealAhead = errors.New("bus: sealed in the future")
)

// ResealDue reports whether an owner's periodic pass number pass puts key
// again although its value is unchanged and still stored: at one pass in
// every, its own (a hash of the key), so that these puts are spread over
// the passes. Readers take a stored value however old it is; the owner
// writes each key again now and then only to bring back a value a reader
// refused wrongly (a clock out of bounds, a floor after a flood).
func ResealDue(key string, pass, every uint64) bool {
	h := fnv.New64a()
	_, _ = h.Write([]byte(key))
	return every <= 1 || h.Sum64()%every == pass%every
}

// forgery reports whether err is a value or message refused for its seal:
// missing, not the owner's, out of bounds or replayed.
func forgery(err error) bool {
	return errors.Is(err, ErrUnsealed) || errors.Is(err, ErrBadSeal) || errors.Is(err, ErrReplayed) || errors.Is(err, ErrSealAhead)
}

const (
	// sealAhead is how far after the reader's clock a seal's at may be:
	// the clock skew Berth tolerates between its hosts (and its NATS
	// servers, see copyAge).
	sealAhead = 5 * time.Minute
	// copyAge is how long before the server stored it a value may have
	// been sealed: a stored value sealed earlier is a copy.
	copyAge = 5 * time.Minute
)

const (
	sealContext = "berth-seal-v1"
	sealName    = `"seal":"`
	sealAtLen   = 16
	sealSigLen  = 86 // base64url of 64 bytes, unpadded
	// sealTail is `"seal":"<at>.<sig>"}`, the fixed-length end of a sealed object.
	sealTail = len(sealName) + sealAtLen + 1 + sealSigLen + 2

	kindKV  = "kv"
	kindMsg = "msg"
	opPut   = "put"
	opDel   = "del"
	opMsg   = "msg"
	// trustPrefix starts a credential file's trust line: "# berth-trust <role> <public key>".
	trustPrefix = "# berth-trust "
)

// deleteBody is the object a sealed delete marker carries.
var deleteBody = []byte(`{"op":"delete"}`)

// Keys are a daemon's record keys: its role's nkey, which seals what it
// writes, and the public keys of the roles whose records it trusts. Nil
// Keys seal nothing and verify nothing (a NATS without Berth's roles).
type Keys struct {
	signer ed25519.PrivateKey
	trust  map[string][]ed25519.PublicKey
	// role is the writing role whose trusted key is signer's, "" for none
	// (the reader); RoleLBAgent for a node's key.
	role string
	// node is the lbagent node whose key signer is, "" for a role's key
	// (its credential's "# berth-node <node>" line).
	node string
}

// Node returns the lbagent node whose own key these are (a credential of
// `scheduler nats-credential lbagent --node`), or "".
func (k *Keys) Node() string {
	if k == nil {
		return ""
	}
	return k.node
}

// LoadKeys reads a credential file as `scheduler nats-credential` prints
// it: the role's nkey seed, one trust line per key of a writing role, and
// for an lbagent node's own key a "# berth-node <node>" line. A file
// without trust lines is refused: this daemon could not tell a forged
// record from a real one.
func LoadKeys(path string) (*Keys, error) {
	if _, err := SeedPublicKey(path); err != nil { // mode and seed checks
		return nil, err
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	defer wipe(b)
	kp, err := nkeys.ParseDecoratedNKey(b)
	if err != nil {
		return nil, fmt.Errorf("nkey seed %s: %w", path, err)
	}
	trust := map[string][]string{}
	node := ""
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), strings.TrimSpace(nodePrefix)); ok {
			node = strings.TrimSpace(rest)
			if err := msg.CheckToken(node); err != nil || node == "" {
				kp.Wipe()
				return nil, fmt.Errorf("nkey file %s: node line %q: %v", path, strings.TrimSpace(line), err)
			}
			continue
		}
		rest, ok := strings.CutPrefix(strings.TrimSpace(line), strings.TrimSpace(trustPrefix))
		if !ok {
			continue
		}
		role, pub, ok := strings.Cut(strings.TrimSpace(rest), " ")
		if !ok {
			kp.Wipe()
			return nil, fmt.Errorf("nkey file %s: trust line %q: want \"%s<role> <public key>\"", path, strings.TrimSpace(line), trustPrefix)
		}
		trust[role] = append(trust[role], strings.TrimSpace(pub))
	}
	if len(trust) == 0 {
		kp.Wipe()
		return nil, fmt.Errorf("nkey file %s has no berth-trust lines (the public keys of the roles whose records this daemon reads): "+
			"print it again with `scheduler nats-credential <role>`", path)
	}
	k, err := newKeys(kp, trust)
	if err != nil {
		return nil, fmt.Errorf("nkey file %s: %w", path, err)
	}
	if node != "" {
		if k.role != "" {
			return nil, fmt.Errorf("nkey file %s: the key of lbagent node %s is also trusted as the %s role's: "+
				"print the node's credential again with `scheduler nats-credential lbagent --node %s`", path, node, k.role, node)
		}
		k.role, k.node = RoleLBAgent, node
	}
	return k, nil
}

// writerRoles are the roles that own buckets or subjects.
func writerRoles() []string { return []string{RoleScheduler, RoleHealthd, RoleLBAgent} }

// newKeys takes kp's private key, and wipes kp.
func newKeys(kp nkeys.KeyPair, trust map[string][]string) (*Keys, error) {
	defer kp.Wipe()
	encoded, err := kp.PrivateKey()
	if err != nil {
		return nil, err
	}
	defer wipe(encoded)
	priv, err := nkeys.Decode(nkeys.PrefixBytePrivate, encoded)
	if err != nil || len(priv) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("nkey seed: not an ed25519 key (%v)", err)
	}
	k := &Keys{signer: ed25519.PrivateKey(priv), trust: map[string][]ed25519.PublicKey{}}
	for role, pubs := range trust {
		if !slices.Contains(writerRoles(), role) {
			return nil, fmt.Errorf("trust line for role %q: want one of %v", role, writerRoles())
		}
		for _, pub := range pubs {
			if !nkeys.IsValidPublicUserKey(pub) {
				return nil, fmt.Errorf("trust line for %s: %q is not a user public key (\"U…\")", role, pub)
			}
			raw, err := nkeys.Decode(nkeys.PrefixByteUser, []byte(pub))
			if err != nil || len(raw) != ed25519.PublicKeySize {
				return nil, fmt.Errorf("trust line for %s: %q is not a user public key (%v)", role, pub, err)
			}
			k.trust[role] = append(k.trust[role], ed25519.PublicKey(raw))
		}
	}
	own := k.signer.Public().(ed25519.PublicKey)
	for _, r := range writerRoles() {
		if len(k.trust[r]) == 0 {
			return nil, fmt.Errorf("no trust line for the %s role: every role that writes records needs one", r)
		}
		for _, pub := range k.trust[r] {
			if pub.Equal(own) {
				k.role = r
			}
		}
	}
	return k, nil
}

// sealer seals and opens the records of one connection under one set of
// names: which role owns a bucket or a subject comes from the contract's
// ownership table (grantOf).
type sealer struct {
	keys *Keys
	// nodes are the lbagent nodes' keys, once a NodeDirectory follows
	// them (nodes.go); nil: the lbagent role's trust lines alone.
	nodes   atomic.Pointer[nodeTrust]
	scope   nodeScope
	buckets map[string]string // bucket → owning role
	// cowriters are, by bucket, the other roles whose seals it takes:
	// which of its keys each may write is the reader's rule (HealthWriter).
	cowriters map[string][]string
	subs      []ownedSubject
	now       func() time.Time
	last      atomic.Int64 // the last at sealed, so ats strictly increase
	// ahead and maxCopy are sealAhead and copyAge (tests shorten them).
	ahead, maxCopy time.Duration

	// floors are the highest ats seen, sealed by this role, in each bucket
	// it owns: a write seals above them, so that readers, which refuse a
	// lower at than the key's (Watcher) and, after a flood of deletes, a
	// lower one than the bucket's floor (sealFence), take it even when the
	// last writer was another process whose clock is ahead (the previous
	// leader, another checker). Only ats within bounds are seen (open).
	floorMu sync.Mutex
	floors  map[string]int64

	bufs sync.Pool
}

type ownedSubject struct {
	pattern []string
	role    string
}

func newSealer(keys *Keys, n msg.Names) *sealer {
	s := &sealer{keys: keys, buckets: map[string]string{}, now: time.Now, ahead: sealAhead, maxCopy: copyAge, floors: map[string]int64{}, cowriters: map[string][]string{},
		bufs: sync.Pool{New: func() any { return new(bytes.Buffer) }}, scope: newNodeScope(n)}
	for _, r := range writerRoles() {
		g, _ := grantOf(n, r)
		for _, b := range g.buckets {
			s.buckets[b] = r
		}
		for _, b := range g.cowrite {
			s.cowriters[b] = append(s.cowriters[b], r)
		}
		for _, p := range g.publish {
			s.subs = append(s.subs, ownedSubject{pattern: strings.Split(p, "."), role: r})
		}
	}
	return s
}

// owner is the role that owns a bucket (kind kv) or a subject (kind msg).
func (s *sealer) owner(kind, where string) (string, bool) {
	if kind == kindKV {
		r, ok := s.buckets[where]
		return r, ok
	}
	tokens := strings.Split(where, ".")
	for _, o := range s.subs {
		if subjectMatch(o.pattern, tokens) {
			return o.role, true
		}
	}
	return "", false
}

// subjectMatch matches a literal subject against a NATS pattern.
func subjectMatch(pattern, tokens []string) bool {
	for i, p := range pattern {
		if p == ">" {
			return len(tokens) > i
		}
		if i >= len(tokens) || (p != "*" && p != tokens[i]) {
			return false
		}
	}
	return len(pattern) == len(tokens)
}

// signedInput writes what a seal signs into buf.
func signedInput(buf *bytes.Buffer, kind, where, key, op string, at []byte, body []byte) {
	for _, part := range []string{sealContext, kind, where, key, op} {
		buf.WriteString(part)
		buf.WriteByte('\n')
	}
	buf.Write(at)
	buf.WriteByte('\n')
	buf.Write(body)
}

// seal returns body with this daemon's seal, or body itself when it holds
// no key. body must be a JSON object.
func (s *sealer) seal(kind, where, key, op string, body []byte) ([]byte, error) {
	if s == nil || s.keys == nil || s.keys.signer == nil {
		return body, nil
	}
	if len(body) < 2 || body[0] != '{' || body[len(body)-1] != '}' {
		return nil, fmt.Errorf("seal %s %s: the value is not a JSON object", where, key)
	}
	at := s.nextAt(s.floor(kind, where))
	var atHex [sealAtLen]byte
	hex.Encode(atHex[:], []byte{byte(at >> 56), byte(at >> 48), byte(at >> 40), byte(at >> 32), byte(at >> 24), byte(at >> 16), byte(at >> 8), byte(at)})
	buf := s.bufs.Get().(*bytes.Buffer)
	buf.Reset()
	defer s.bufs.Put(buf)
	signedInput(buf, kind, where, key, op, atHex[:], body)
	sig := ed25519.Sign(s.keys.signer, buf.Bytes())
	out := make([]byte, 0, len(body)+1+sealTail)
	out = append(out, body[:len(body)-1]...)
	if len(body) > 2 {
		out = append(out, ',')
	}
	out = append(out, sealName...)
	out = append(out, atHex[:]...)
	out = append(out, '.')
	out = base64.RawURLEncoding.AppendEncode(out, sig)
	return append(out, '"', '}'), nil
}

// nextAt returns an at above floor and above every at this sealer gave,
// but never more than s.ahead after its clock: readers refuse more, and a
// floor or a last at that far ahead (a clock set back since) is one that
// readers with this clock did not take either. So nothing overflows,
// whatever was seen.
func (s *sealer) nextAt(floor int64) int64 {
	for {
		last := s.last.Load()
		now := s.now().UnixNano()
		limit := now + int64(s.ahead)
		if limit < now { // a clock near 2^63
			limit = math.MaxInt64
		}
		at := min(max(now, min(last, limit-1)+1, min(floor, limit-1)+1), limit)
		if s.last.CompareAndSwap(last, max(last, at)) {
			return at
		}
	}
}

// shares reports whether this daemon writes bucket where beside another
// role (its owner or a co-writer): a key there may change writers (an app
// whose check changes from http to docker), so each seals above every at
// it saw in the bucket, whoever sealed it, or readers would refuse its
// first write of a key the other wrote last with a clock ahead.
func (s *sealer) shares(where string) bool {
	cw := s.cowriters[where]
	return len(cw) > 0 && (s.buckets[where] == s.keys.role || slices.Contains(cw, s.keys.role))
}

// floor is the highest at this role was seen to seal in bucket where.
func (s *sealer) floor(kind, where string) int64 {
	if kind != kindKV {
		return 0
	}
	s.floorMu.Lock()
	defer s.floorMu.Unlock()
	return s.floors[where]
}

// observe notes the at of a verified value or delete of one of this
// role's own buckets: the next write in the bucket seals above it.
func (s *sealer) observe(where string, at int64) {
	s.floorMu.Lock()
	defer s.floorMu.Unlock()
	s.floors[where] = max(s.floors[where], at)
}

// open returns the object a value carries without its seal, and the
// seal's at. A daemon that trusts keys requires a seal of the owner of
// where, over this key and op, with an at within bounds (checkAt; stored
// is when the server stored the value, zero for a message). One that
// trusts none strips a seal it finds, checks nothing and returns at 0.
func (s *sealer) open(kind, where, key, op string, value []byte, stored time.Time) ([]byte, int64, error) {
	body, at, _, err := s.openBy(kind, where, key, op, value, stored)
	return body, at, err
}

// openBy is open, and also returns the role whose key sealed the value:
// the owner of where, or one of its co-writers (a bucket such as health,
// where the scheduler writes the keys of the checks it runs); "" when
// seals are not checked. Which keys a co-writer may write is the
// reader's rule, as only the reader knows the records that decide it
// (HealthWriter).
func (s *sealer) openBy(kind, where, key, op string, value []byte, stored time.Time) ([]byte, int64, string, error) {
	body, atHex, sig, sealed := splitSeal(value)
	if s == nil || s.keys == nil || len(s.keys.trust) == 0 {
		return body, 0, "", nil
	}
	if !sealed {
		return nil, 0, "", ErrUnsealed
	}
	owner, ok := s.owner(kind, where)
	if !ok {
		return nil, 0, "", fmt.Errorf("%w: %s has no owner in the contract", ErrBadSeal, where)
	}
	raw := make([]byte, 64)
	if n, err := base64.RawURLEncoding.Decode(raw, sig); err != nil || n != 64 {
		return nil, 0, "", fmt.Errorf("%w: malformed signature", ErrBadSeal)
	}
	buf := s.bufs.Get().(*bytes.Buffer)
	buf.Reset()
	defer s.bufs.Put(buf)
	signedInput(buf, kind, where, key, op, atHex, body)
	roles := []string{owner}
	if kind == kindKV {
		roles = append(roles, s.cowriters[where]...)
	}
	for _, role := range roles {
		trusted, err := s.trusted(role, kind, where, key)
		if err != nil {
			return nil, 0, "", err
		}
		if role == s.keys.role && s.keys.signer != nil {
			// What this daemon sealed itself, as an lbagent node's own key
			// that is in no trust line: an lbagent reads its node's record
			// before its first heartbeat, to seal above it.
			trusted = append(slices.Clip(trusted), s.keys.signer.Public().(ed25519.PublicKey))
		}
		for _, v := range trusted {
			if !ed25519.Verify(v, buf.Bytes(), raw) {
				continue
			}
			at, err := checkAt(parseAt(atHex), s.now(), stored, s.ahead, s.maxCopy)
			if err != nil {
				return nil, 0, "", fmt.Errorf("%s %q: %w", where, key, err)
			}
			if kind == kindKV && (role == s.keys.role || s.shares(where)) {
				s.observe(where, at)
			}
			return body, at, role, nil
		}
	}
	return nil, 0, "", fmt.Errorf("%w: not signed by the %s role for %s %q", ErrBadSeal, strings.Join(roles, " or "), where, key)
}

// checkAt returns a verified seal's at when it is within bounds: below
// 2^63, at most ahead after now, and, for a stored value (stored not
// zero), sealed at most maxCopy before the server stored it, or before
// now when that is earlier.
func checkAt(at uint64, now, stored time.Time, ahead, maxCopy time.Duration) (int64, error) {
	if at > math.MaxInt64 {
		return 0, fmt.Errorf("%w: at %#x is 2^63 or more", ErrSealAhead, at)
	}
	n := int64(at)
	if over := n - now.UnixNano(); over > int64(ahead) {
		return 0, fmt.Errorf("%w: sealed at %s, %s after this clock (more than %s: this clock or its writer's is wrong, or its key was stolen)",
			ErrSealAhead, stamp(n), time.Duration(over).Round(time.Second), ahead)
	}
	if !stored.IsZero() {
		// Old when the server stored it, and by this clock too: a server
		// whose clock runs ahead makes no fresh write look like a copy
		// (nor an owner's repair of it refused again, and again).
		if age := min(stored.UnixNano(), now.UnixNano()) - n; age > int64(maxCopy) {
			return 0, fmt.Errorf("%w: a copy, sealed at %s, %s before the server stored it (more than %s; or the clocks of its writer and of NATS differ that much)",
				ErrReplayed, stamp(n), time.Duration(stored.UnixNano()-n).Round(time.Second), maxCopy)
		}
	}
	return n, nil
}

// stamp formats a seal's at for errors.
func stamp(at int64) string { return time.Unix(0, at).UTC().Format(time.RFC3339Nano) }

// parseAt reads the 16 hex digits of a seal's at (checked by splitSeal).
func parseAt(at []byte) uint64 {
	var n uint64
	for _, c := range at {
		d := uint64(c - '0')
		if c >= 'a' {
			d = uint64(c-'a') + 10
		}
		n = n<<4 | d
	}
	return n
}

// splitSeal splits a sealed object into the object without its seal, the
// at digits and the signature; sealed is false (and body the value) when
// the value does not end in a well-formed seal.
func splitSeal(value []byte) (body, at, sig []byte, sealed bool) {
	n := len(value)
	if n < sealTail+1 {
		return value, nil, nil, false
	}
	tail := value[n-sealTail:]
	if !bytes.HasPrefix(tail, []byte(sealName)) || tail[len(sealName)+sealAtLen] != '.' || !bytes.HasSuffix(tail, []byte(`"}`)) {
		return value, nil, nil, false
	}
	at = tail[len(sealName) : len(sealName)+sealAtLen]
	sig = tail[len(sealName)+sealAtLen+1 : sealTail-2]
	for _, c := range at {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return value, nil, nil, false
		}
	}
	switch value[n-sealTail-1] {
	case '{': // the object had no other member
		return []byte("{}"), at, sig, true
	case ',':
		b := make([]byte, 0, n-sealTail)
		b = append(b, value[:n-sealTail-1]...)
		return append(b, '}'), at, sig, true
	}
	return value, nil, nil, false
}
