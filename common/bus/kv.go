package bus

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/berthhq/berth/common/msg"
)

// Errors returned by KV operations.
var (
	// ErrKeyNotFound is a Get of a key that has no value.
	ErrKeyNotFound = errors.New("bus: key not found")
	// ErrKeyExists is a Create of a key that has a value.
	ErrKeyExists = errors.New("bus: key exists")
	// ErrWrongRevision is an Update whose expected revision is not the key's last.
	ErrWrongRevision = errors.New("bus: wrong last revision")
	// ErrBucketNotFound is a bucket that EnsureBuckets has not created.
	ErrBucketNotFound = errors.New("bus: bucket not found")
	// ErrBucketFull is a write of a new key, or of a larger value, into a
	// bucket at its MaxBytes.
	ErrBucketFull = errors.New("bus: bucket full")
	// ErrReplicas is a bucket whose replicas the NATS server cannot place:
	// more than the servers of its cluster (one, unclustered).
	ErrReplicas = errors.New("bus: bucket replicas refused")
)

// Storage is where a bucket keeps its data.
type Storage int

// Storage kinds.
const (
	// FileStorage survives a server restart.
	FileStorage Storage = iota
	// MemoryStorage is faster and lost on restart.
	MemoryStorage
)

// BucketConfig describes one KV bucket.
type BucketConfig struct {
	// Name is the bucket name.
	Name string
	// Description is shown by NATS tools.
	Description string
	// History is how many values per key are kept (1–64); zero means 1.
	History uint8
	// TTL expires values that are not written again within it; zero keeps them.
	TTL time.Duration
	// Storage is file or memory.
	Storage Storage
	// Replicas is the stream replica count in a cluster; zero means the
	// connection's (Options.Replicas). EnsureBuckets raises a bucket
	// that has fewer, and keeps more.
	Replicas int
	// MaxValueSize caps one value in bytes; zero means the server's limit.
	MaxValueSize int32
	// MaxBytes caps what the bucket stores, values and delete markers;
	// zero means no cap. EnsureBuckets keeps a larger cap an operator set.
	MaxBytes int64
	// MaxConsumers caps the consumers (watches) of its stream at once;
	// zero means no cap.
	MaxConsumers int
}

// ensureAttempt bounds one attempt of EnsureBuckets at one bucket.
const ensureAttempt = 10 * time.Second

// EnsureBuckets creates each bucket, or updates its settings when it exists,
// so that every daemon can call it at start-up. A connection whose
// credential may not create a bucket fails at once with
// ErrPermissionDenied: with authorization, pass only the role's
// OwnedBuckets.
//
// A bucket's MaxBytes is the larger of its config's and the one it has
// (an operator who raised it with `nats stream edit` keeps it), and at
// least twice what it stores, so that an update never makes the server
// drop values to fit. MaxConsumers is set on its stream afterwards, as is
// AllowRollup, off: the KV API has neither setting.
//
// Its replicas are the larger of the config's (or the connection's,
// Options.Replicas) and the ones it has: a bucket with fewer is raised
// (JetStream copies it to the new peers while it serves), and logged; an
// operator who raised it by hand keeps it, and a daemon started with the
// default of 1 never lowers a cluster's buckets. A server that cannot
// place them (more replicas than servers) fails with ErrReplicas.
//
// Each bucket gets attempts of ensureAttempt each until ctx ends: a
// JetStream API reply lost while a cluster changes leaders (or a server
// too busy to answer in time) would otherwise hold the whole of ctx, and
// creating or updating a bucket again is harmless.
func (c *Conn) EnsureBuckets(ctx context.Context, buckets []BucketConfig) error {
	for _, b := range buckets {
		for attempt := 1; ; attempt++ {
			actx, cancel := context.WithTimeout(ctx, ensureAttempt)
			err := c.ensureBucket(actx, b)
			if err == nil {
				err = c.limitConsumers(actx, b.Name)
			}
			cancel()
			if err == nil {
				break
			}
			if ctx.Err() == nil && (errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout)) {
				c.logger.Warn("a bucket was not ensured in time; trying again", zap.String("bucket", b.Name), zap.Int("attempt", attempt),
					zap.Duration("attempt_timeout", ensureAttempt), zap.Error(err))
				continue
			}
			return fmt.Errorf("ensure bucket %s: %w", b.Name, err)
		}
	}
	return nil
}

func (c *Conn) ensureBucket(ctx context.Context, b BucketConfig) error {
	cfg := jetstream.KeyValueConfig{
		Bucket:       b.Name,
		Description:  b.Description,
		History:      max(b.History, 1),
		TTL:          b.TTL,
		Replicas:     c.bucketReplicas(b),
		MaxValueSize: b.MaxValueSize,
		Storage:      jetstream.FileStorage,
	}
	if b.MaxValueSize == 0 {
		cfg.MaxValueSize = -1
	}
	if b.Storage == MemoryStorage {
		cfg.Storage = jetstream.MemoryStorage
	}
	s := kvStream(b.Name)
	gctx, stop := c.refusals.guard(ctx, jsAPI+"INFO", jsAPI+"STREAM.INFO."+s, jsAPI+"STREAM.UPDATE."+s, jsAPI+"STREAM.CREATE."+s)
	defer stop()
	var have *jetstream.StreamInfo
	st, err := c.js.Stream(gctx, s)
	switch err = denial(gctx, err); {
	case err == nil:
		have = st.CachedInfo()
	case !errors.Is(err, jetstream.ErrStreamNotFound):
		return err
	}
	cfg.MaxBytes = c.maxBytes(b, have)
	if have != nil {
		switch had := max(have.Config.Replicas, 1); {
		case had > cfg.Replicas:
			cfg.Replicas = had
		case had < cfg.Replicas:
			c.logger.Info("raising the bucket's replicas: the NATS cluster copies it to the new peers while it serves",
				zap.String("bucket", b.Name), zap.Int("replicas", had), zap.Int("new_replicas", cfg.Replicas))
		}
	}
	if _, err := c.js.CreateOrUpdateKeyValue(gctx, cfg); err != nil {
		err = denial(gctx, err)
		if rerr := replicasErr(err, cfg.Replicas, s); rerr != nil {
			return rerr
		}
		if strings.Contains(err.Error(), "insufficient resources") {
			err = fmt.Errorf("%w: the NATS server cannot set aside its max bytes (%d) within its JetStream limits: give it more room "+
				"(max_file_store, max_memory_store, or free disk) or lower the cap with `nats stream edit %s --max-bytes`", err, cfg.MaxBytes, s)
		}
		return err
	}
	if st, err = c.js.Stream(gctx, s); err != nil {
		return denial(gctx, err)
	}
	sc := st.CachedInfo().Config
	want := -1
	if b.MaxConsumers > 0 {
		want = b.MaxConsumers
		if have != nil {
			want = max(want, have.Config.MaxConsumers) // -1 (none) before the first cap
		}
	}
	if sc.MaxConsumers == want && !sc.AllowRollup {
		return nil
	}
	// No rollups: Berth never purges a key, and a message carrying a
	// Nats-Rollup header that any role can have the server copy into the
	// bucket (docs/nats.md, Sealed records) would otherwise erase every
	// value of the bucket at once ("all") or a key's ("sub").
	sc.MaxConsumers, sc.AllowRollup = want, false
	_, err = c.js.UpdateStream(gctx, sc)
	return denial(gctx, err)
}

// bucketReplicas is the replicas bucket b asks for: its own, else the
// connection's.
func (c *Conn) bucketReplicas(b BucketConfig) int {
	if b.Replicas > 0 {
		return b.Replicas
	}
	return c.replicas
}

// JetStream API error codes nats.go has no constant for (nats-server's
// errors.json).
const (
	// errCodeNoPeers is "no suitable peers for placement".
	errCodeNoPeers jetstream.ErrorCode = 10005
	// errCodeInsufficientResources is "insufficient resources".
	errCodeInsufficientResources jetstream.ErrorCode = 10023
	// errCodeReplicasNotSupported is "replicas > 1 not supported in
	// non-clustered mode".
	errCodeReplicasNotSupported jetstream.ErrorCode = 10074
)

// replicasErr turns the server's refusal to place a bucket's replicas
// into ErrReplicas, saying what to do; nil when err is another error.
// An unclustered server refuses any count above 1; a cluster refuses more
// than it has servers with JetStream (no suitable peers), or, with as
// many, when one of them is down or short of room (insufficient
// resources, which is also a max bytes that does not fit).
func replicasErr(err error, replicas int, stream string) error {
	var apiErr *jetstream.APIError
	if replicas <= 1 || !errors.As(err, &apiErr) {
		return nil
	}
	switch apiErr.ErrorCode {
	case errCodeReplicasNotSupported:
		return fmt.Errorf("%w: %d replicas (--nats-replicas) on a NATS server that is not in a cluster (%v): give --nats-replicas 1, "+
			"or run NATS as a cluster of at least %d servers and list them all in --nats-url", ErrReplicas, replicas, err, replicas)
	case errCodeNoPeers, errCodeInsufficientResources:
		return fmt.Errorf("%w: the NATS cluster cannot place %d replicas of %s (%v): it needs %d servers with JetStream, all up, each with room "+
			"for the bucket's max bytes; lower --nats-replicas to the cluster's size, start the missing servers, or give them room "+
			"(max_file_store, max_memory_store); `nats server report jetstream` shows them", ErrReplicas, replicas, stream, err, replicas)
	}
	return nil
}

// maxBytes is the MaxBytes EnsureBuckets gives bucket b, whose stream is
// have (nil when it does not exist yet).
func (c *Conn) maxBytes(b BucketConfig, have *jetstream.StreamInfo) int64 {
	if b.MaxBytes <= 0 {
		return 0
	}
	limit := b.MaxBytes
	if have == nil {
		return limit
	}
	limit = max(limit, have.Config.MaxBytes)
	if used := int64(have.State.Bytes); used > limit/2 {
		c.logger.Warn("bucket holds more than half its max bytes: its cap is raised to twice what it holds; look for keys it should not have (`nats kv ls`)",
			zap.String("bucket", b.Name), zap.Int64("bytes", used), zap.Int64("max_bytes", limit), zap.Int64("new_max_bytes", 2*used))
		limit = 2 * used
	}
	return limit
}

// full turns the server's refusal of a write into a full bucket into
// ErrBucketFull, with what the operator can do.
func (k *KV) full(err error) error {
	if err == nil || !strings.Contains(err.Error(), "maximum bytes exceeded") {
		return err
	}
	return fmt.Errorf("%w: %s is at its max bytes (%v); `nats stream info %s` shows what it holds: keys that no app or instance owns are junk "+
		"(a flood through the server, which the owner deletes), otherwise raise the cap with `nats stream edit %s --max-bytes`, which Berth keeps",
		ErrBucketFull, k.bucket, err, kvStream(k.bucket), kvStream(k.bucket))
}

// consumersErr says what to do when a bucket's stream has as many
// consumers as its MaxConsumers allows.
func consumersErr(bucket string, err error) error {
	if err == nil || !strings.Contains(err.Error(), "maximum consumers limit") {
		return err
	}
	return fmt.Errorf("%w: %s has as many watches as its stream allows (max consumers); `nats consumer ls %s` shows them: "+
		"many of one client are a leak or a flood, otherwise raise the cap with `nats stream edit %s --max-consumers`, which Berth keeps",
		err, bucket, kvStream(bucket), kvStream(bucket))
}

// BucketStatus is what a bucket reports about itself.
type BucketStatus struct {
	// Values is the number of stored values, history included.
	Values uint64
	// History is the values kept per key.
	History int64
	// TTL is the value expiry, zero for none.
	TTL time.Duration
	// Memory reports memory storage.
	Memory bool
	// Bytes is what the bucket stores now.
	Bytes uint64
	// MaxBytes is its cap, -1 for none.
	MaxBytes int64
	// MaxConsumers is its stream's cap of consumers, -1 for none.
	MaxConsumers int
	// Replicas is how many servers of the NATS cluster hold it.
	Replicas int
	// LastRevision is the revision of the bucket's latest write (a put
	// or a delete marker), 0 when none: a watcher that has seen it is
	// caught up.
	LastRevision uint64
}

// Op is what a KV entry did.
type Op int

// KV operations.
const (
	// OpPut set a value.
	OpPut Op = iota
	// OpDelete removed a value (a delete, a purge or an expiry).
	OpDelete
)

// String returns "put" or "delete".
func (o Op) String() string {
	if o == OpDelete {
		return "delete"
	}
	return "put"
}

// Entry is one stored value.
type Entry struct {
	// Key is the entry's key.
	Key string
	// Value is the raw value; empty for a delete.
	Value []byte
	// Revision is the bucket-wide sequence of this write.
	Revision uint64
	// Op is put or delete.
	Op Op
	// Created is when the server stored it.
	Created time.Time
	// Sealer is the role whose key sealed it (see Event.Sealer).
	Sealer string
}

// KV is one bucket. It is safe for concurrent use.
type KV struct {
	kv     jetstream.KeyValue
	bucket string
	conn   *Conn
}

// BucketOpener opens and creates buckets: a Conn, or a wrapper of one.
type BucketOpener interface {
	KV(ctx context.Context, bucket string) (*KV, error)
	EnsureBuckets(ctx context.Context, buckets []BucketConfig) error
}

var _ BucketOpener = (*Conn)(nil)

// OwnedKV opens a bucket that role owns, creating the buckets role owns
// or manages first when it is missing: NATS was not ready when the daemon
// started (a cluster still electing its leader), or came back empty. The
// managed ones come back with the others (the scheduler's agents bucket:
// lbagents with node keys of their own cannot create it).
func OwnedKV(ctx context.Context, c BucketOpener, n msg.Names, role, bucket string) (*KV, error) {
	kv, err := c.KV(ctx, bucket)
	if !errors.Is(err, ErrBucketNotFound) {
		return kv, err
	}
	owned, err := OwnedBuckets(n, role)
	if err != nil {
		return nil, err
	}
	managed, err := ManagedBuckets(n, role)
	if err != nil {
		return nil, err
	}
	if err := c.EnsureBuckets(ctx, append(owned, managed...)); err != nil {
		return nil, err
	}
	return c.KV(ctx, bucket)
}

// KV opens a bucket that exists.
func (c *Conn) KV(ctx context.Context, bucket string) (*KV, error) {
	gctx, stop := c.refusals.guard(ctx, jsAPI+"STREAM.INFO."+kvStream(bucket))
	defer stop()
	kv, err := c.js.KeyValue(gctx, bucket)
	err = denial(gctx, err)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, fmt.Errorf("open bucket %s: %w", bucket, ErrBucketNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", bucket, err)
	}
	return &KV{kv: kv, bucket: bucket, conn: c}, nil
}

// Bucket returns the bucket's name.
func (k *KV) Bucket() string { return k.bucket }

// Status returns the bucket's settings and size.
func (k *KV) Status(ctx context.Context) (BucketStatus, error) {
	st, err := k.kv.Status(ctx)
	if err != nil {
		return BucketStatus{}, fmt.Errorf("status of bucket %s: %w", k.bucket, err)
	}
	out := BucketStatus{Values: st.Values(), History: st.History(), TTL: st.TTL(), Bytes: st.Bytes(), MaxBytes: -1, MaxConsumers: -1, Replicas: 1}
	if s, ok := st.(*jetstream.KeyValueBucketStatus); ok {
		cfg := s.StreamInfo().Config
		out.Memory, out.MaxBytes, out.MaxConsumers = cfg.Storage == jetstream.MemoryStorage, cfg.MaxBytes, cfg.MaxConsumers
		out.Replicas = max(cfg.Replicas, 1)
		out.LastRevision = s.StreamInfo().State.LastSeq
	}
	return out, nil
}

// guardWrite returns a context that ends as soon as the server refuses a
// write of key (ErrPermissionDenied); stop releases it.
func (k *KV) guardWrite(ctx context.Context, key string) (context.Context, func()) {
	return k.conn.refusals.guard(ctx, "$KV."+k.bucket+"."+key)
}

// Put stores value at key and returns the write's revision.
func (k *KV) Put(ctx context.Context, key string, value []byte) (uint64, error) {
	value, err := k.conn.seals.seal(kindKV, k.bucket, key, opPut, value)
	if err != nil {
		return 0, err
	}
	gctx, stop := k.guardWrite(ctx, key)
	defer stop()
	rev, err := k.kv.Put(gctx, key, value)
	err = k.full(denial(gctx, err))
	if err != nil {
		return 0, fmt.Errorf("put %s/%s: %w", k.bucket, key, err)
	}
	return rev, nil
}

// Create stores value at key only if the key has no value (ErrKeyExists).
func (k *KV) Create(ctx context.Context, key string, value []byte) (uint64, error) {
	value, err := k.conn.seals.seal(kindKV, k.bucket, key, opPut, value)
	if err != nil {
		return 0, err
	}
	gctx, stop := k.guardWrite(ctx, key)
	defer stop()
	rev, err := k.kv.Create(gctx, key, value)
	err = k.full(denial(gctx, err))
	if errors.Is(err, jetstream.ErrKeyExists) {
		return 0, fmt.Errorf("create %s/%s: %w", k.bucket, key, ErrKeyExists)
	}
	if err != nil {
		return 0, fmt.Errorf("create %s/%s: %w", k.bucket, key, err)
	}
	return rev, nil
}

// Update stores value at key only if the key's last revision is last
// (compare and set); otherwise it fails with ErrWrongRevision.
func (k *KV) Update(ctx context.Context, key string, value []byte, last uint64) (uint64, error) {
	value, err := k.conn.seals.seal(kindKV, k.bucket, key, opPut, value)
	if err != nil {
		return 0, err
	}
	gctx, stop := k.guardWrite(ctx, key)
	defer stop()
	rev, err := k.kv.Update(gctx, key, value, last)
	err = k.full(denial(gctx, err))
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence {
		return 0, fmt.Errorf("update %s/%s at revision %d: %w", k.bucket, key, last, ErrWrongRevision)
	}
	if err != nil {
		return 0, fmt.Errorf("update %s/%s: %w", k.bucket, key, err)
	}
	return rev, nil
}

// Get returns the current value of key, or ErrKeyNotFound (also when its
// last write is a delete, as with nats.go's KV). It asks the
// server itself (a direct get) rather than through nats.go's KV, which
// takes an entry's time from the first timestamp header: a value copied
// through a direct get carries the original's timestamp header before the
// server's own, and the seal's copy-age check needs the server's (last).
func (k *KV) Get(ctx context.Context, key string) (Entry, error) {
	if !validKey(key) {
		return Entry{}, fmt.Errorf("get %s/%q: %w", k.bucket, key, jetstream.ErrInvalidKey)
	}
	s := kvStream(k.bucket)
	subject := jsAPI + "DIRECT.GET." + s + ".$KV." + k.bucket + "." + key
	gctx, stop := k.conn.refusals.guard(ctx, subject)
	defer stop()
	if _, ok := gctx.Deadline(); !ok {
		var cancel context.CancelFunc
		gctx, cancel = context.WithTimeout(gctx, getTimeout)
		defer cancel()
	}
	m, err := k.conn.nc.RequestWithContext(gctx, subject, nil)
	if err = denial(gctx, err); err != nil {
		return Entry{}, fmt.Errorf("get %s/%s: %w", k.bucket, key, err)
	}
	out, err := directEntry(key, m)
	if err == nil && out.Op == OpDelete {
		err = ErrKeyNotFound // sealed or not: a delete leaves no value either way
	}
	if err != nil {
		return Entry{}, fmt.Errorf("get %s/%s: %w", k.bucket, key, err)
	}
	body, _, role, err := k.conn.seals.openBy(kindKV, k.bucket, key, opPut, out.Value, out.Created)
	if err != nil {
		k.conn.forged.Add(1)
		return Entry{}, fmt.Errorf("get %s/%s: %w", k.bucket, key, err)
	}
	out.Value, out.Sealer = body, role
	return out, nil
}

// getTimeout bounds a Get whose context has no deadline.
const getTimeout = 5 * time.Second

// validKey is nats.go's rule for a KV key: no wildcard, no empty token.
func validKey(key string) bool {
	if key == "" || key[0] == '.' || key[len(key)-1] == '.' || strings.Contains(key, "..") {
		return false
	}
	for _, c := range key {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("-/_=.", c)) {
			return false
		}
	}
	return true
}

// directEntry reads a direct get's answer. The server appends its own
// headers (sequence, time) after those the stored message carries, which
// for a copy include the original's: its own are the last.
func directEntry(key string, m *nats.Msg) (Entry, error) {
	last := func(name string) string {
		if v := m.Header.Values(name); len(v) > 0 {
			return v[len(v)-1]
		}
		return ""
	}
	if len(m.Data) == 0 && m.Header.Get("Status") != "" {
		if m.Header.Get("Status") == "404" {
			return Entry{}, ErrKeyNotFound
		}
		return Entry{}, fmt.Errorf("direct get: %s %s", m.Header.Get("Status"), m.Header.Get("Description"))
	}
	rev, err := strconv.ParseUint(last(jetstream.SequenceHeader), 10, 64)
	if err != nil {
		return Entry{}, fmt.Errorf("direct get: sequence header %q: %w", last(jetstream.SequenceHeader), err)
	}
	created, err := time.Parse(time.RFC3339Nano, last(jetstream.TimeStampHeaer))
	if err != nil {
		return Entry{}, fmt.Errorf("direct get: timestamp header: %w", err)
	}
	op := OpPut
	if v := m.Header.Get(kvOperationHeader); v == "DEL" || v == "PURGE" {
		op = OpDelete
	}
	return Entry{Key: key, Value: m.Data, Revision: rev, Op: op, Created: created}, nil
}

// Delete removes key's value, leaving a delete marker that watchers see.
// With Keys the marker carries a sealed body, the only kind of delete a
// verifying reader acts on.
func (k *KV) Delete(ctx context.Context, key string) error {
	gctx, stop := k.guardWrite(ctx, key)
	defer stop()
	var err error
	if k.conn.seals == nil {
		err = k.kv.Delete(gctx, key)
	} else {
		err = k.sealedDelete(gctx, key)
	}
	if err := k.full(denial(gctx, err)); err != nil {
		return fmt.Errorf("delete %s/%s: %w", k.bucket, key, err)
	}
	return nil
}

// sealedDelete publishes what jetstream's KV Delete does (a message with a
// KV-Operation: DEL header), with a sealed body.
func (k *KV) sealedDelete(ctx context.Context, key string) error {
	body, err := k.conn.seals.seal(kindKV, k.bucket, key, opDel, deleteBody)
	if err != nil {
		return err
	}
	m := nats.NewMsg("$KV." + k.bucket + "." + key)
	m.Header.Set(kvOperationHeader, "DEL")
	m.Data = body
	_, err = k.conn.js.PublishMsg(ctx, m)
	return err
}

// kvOperationHeader marks a KV delete or purge marker.
const kvOperationHeader = "KV-Operation"

// Keys returns every key that has a value.
func (k *KV) Keys(ctx context.Context) ([]string, error) {
	keys, err := k.kv.Keys(ctx)
	if errors.Is(err, jetstream.ErrNoKeysFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("keys of %s: %w", k.bucket, err)
	}
	return keys, nil
}

// DeleteMarkerAge is how long a delete marker stays in a bucket before its
// owner's Sweep purges it.
const DeleteMarkerAge = 30 * time.Minute

// Sweep deletes (sealed, through Delete) every key that has a value and
// that keep refuses (given the key and its last revision, so a caller can
// tell whether the value is still the one it put), and purges each delete marker stored more than
// markerAge ago, so that deleted keys do not fill the bucket's MaxBytes.
// An old marker tells a reader nothing that its absence does not: one
// that starts now finds no value either way, and a running one keeps the
// delete's at in its own fence. A purge removes the marker and what came
// before it, never a value stored after it (a key written again
// meanwhile). It returns how many keys it deleted and markers it purged.
func (k *KV) Sweep(ctx context.Context, keep func(key string, rev uint64) bool, markerAge time.Duration) (deleted, purged int, err error) {
	s := kvStream(k.bucket)
	gctx, stop := k.conn.refusals.guard(ctx, jsAPI+"CONSUMER.CREATE."+s, jsAPI+"STREAM.PURGE."+s)
	defer stop()
	w, err := k.kv.WatchAll(gctx, jetstream.MetaOnly())
	if err != nil {
		return 0, 0, fmt.Errorf("sweep %s: %w", k.bucket, consumersErr(k.bucket, denial(gctx, err)))
	}
	type marker struct {
		key string
		rev uint64
	}
	var drop []string
	var old []marker
	limit := time.Now().Add(-markerAge)
	for e := range w.Updates() {
		if e == nil {
			break
		}
		switch {
		case e.Operation() != jetstream.KeyValuePut:
			if e.Created().Before(limit) {
				old = append(old, marker{e.Key(), e.Revision()})
			}
		case !keep(e.Key(), e.Revision()):
			drop = append(drop, e.Key())
		}
	}
	_ = w.Stop()
	if err := gctx.Err(); err != nil {
		return 0, 0, fmt.Errorf("sweep %s: %w", k.bucket, denial(gctx, err))
	}
	for _, key := range drop {
		if err := k.Delete(ctx, key); err != nil {
			return deleted, purged, err
		}
		deleted++
	}
	if len(old) == 0 {
		return deleted, 0, nil
	}
	st, err := k.conn.js.Stream(gctx, s)
	if err != nil {
		return deleted, 0, fmt.Errorf("sweep %s: %w", k.bucket, denial(gctx, err))
	}
	for _, m := range old {
		err := st.Purge(gctx, jetstream.WithPurgeSubject("$KV."+k.bucket+"."+m.key), jetstream.WithPurgeSequence(m.rev+1))
		if err != nil {
			return deleted, purged, fmt.Errorf("sweep %s: purge the delete marker of %s: %w", k.bucket, m.key, denial(gctx, err))
		}
		purged++
	}
	return deleted, purged, nil
}
