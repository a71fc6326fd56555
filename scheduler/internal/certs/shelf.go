package certs

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/go-acme/lego/v5/challenge"
	"go.uber.org/zap"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// Bus is the NATS connection the certificates and challenges go through.
type Bus interface {
	KV(ctx context.Context, bucket string) (*bus.KV, error)
	EnsureBuckets(ctx context.Context, buckets []bus.BucketConfig) error
	SealTo(role string, secret []byte) ([]msg.SealedKey, error)
}

var _ Bus = (*bus.Conn)(nil)

// BusShelf puts certificates in the certificates bucket, each key sealed
// to the lbagent role, and HTTP-01 answers in the challenges bucket.
type BusShelf struct {
	Conn   Bus
	Names  msg.Names
	Logger *zap.Logger
	// Settle is how long Present waits after the answer is in the bucket,
	// for every lbagent's watch to deliver it, before the CA is told to
	// validate (a KV watch delivers in milliseconds; a CA takes longer).
	Settle time.Duration
}

func (s *BusShelf) bucket(ctx context.Context, name string) (*bus.KV, error) {
	return bus.OwnedKV(ctx, s.Conn, s.Names, bus.RoleScheduler, name)
}

// Put publishes app's certificate with its private key (PEM) sealed to
// the lbagent role.
func (s *BusShelf) Put(ctx context.Context, c store.Certificate, key []byte, term uint64) error {
	boxes, err := s.Conn.SealTo(bus.RoleLBAgent, key)
	if err != nil {
		return err
	}
	m := &msg.Certificate{App: c.App, Names: c.Names, Chain: c.Chain, Keys: boxes, Serial: c.Serial,
		NotBefore: c.NotBefore, NotAfter: c.NotAfter, Term: term, UpdatedAt: time.Now().UTC()}
	b, err := msg.Encode(m)
	if err != nil {
		return fmt.Errorf("certificate of %s: %w", c.App, err)
	}
	kv, err := s.bucket(ctx, s.Names.CertificatesBucket())
	if err != nil {
		return err
	}
	_, err = kv.Put(ctx, c.App, b)
	return err
}

// Sweep deletes the certificates of apps not in keep, and purges the
// delete markers older than bus.DeleteMarkerAge.
func (s *BusShelf) Sweep(ctx context.Context, keep []string) error {
	kv, err := s.bucket(ctx, s.Names.CertificatesBucket())
	if err != nil {
		return err
	}
	_, _, err = kv.Sweep(ctx, func(key string, _ uint64) bool { return slices.Contains(keep, key) }, bus.DeleteMarkerAge)
	return err
}

// Solver returns the HTTP-01 provider of one order.
func (s *BusShelf) Solver(app string, l store.Lease) challenge.Provider {
	return &solver{shelf: s, app: app, term: l.Term}
}

// solver is lego's HTTP-01 provider: it publishes each answer for the
// lbagents and removes it when the CA is done.
type solver struct {
	shelf *BusShelf
	app   string
	term  uint64
}

func (p *solver) Present(ctx context.Context, domain, token, keyAuth string) error {
	m := &msg.Challenge{App: p.app, Host: domain, Token: token, KeyAuthorization: keyAuth, Term: p.term, At: time.Now().UTC()}
	b, err := msg.Encode(m) // validates: a CA's token that is not base64url is refused here
	if err != nil {
		return fmt.Errorf("http-01 answer for %s: %w", domain, err)
	}
	kv, err := p.shelf.bucket(ctx, p.shelf.Names.ChallengesBucket())
	if err != nil {
		return err
	}
	if _, err := kv.Put(ctx, token, b); err != nil {
		return fmt.Errorf("http-01 answer for %s: %w", domain, err)
	}
	p.shelf.Logger.Debug("published an HTTP-01 answer", zap.String("app", p.app), zap.String("host", domain))
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(p.shelf.Settle):
	}
	return nil
}

func (p *solver) CleanUp(ctx context.Context, _, token, _ string) error {
	kv, err := p.shelf.bucket(ctx, p.shelf.Names.ChallengesBucket())
	if err != nil {
		return err
	}
	return kv.Delete(ctx, token)
}

// Leaf parses the first certificate of a PEM chain.
func Leaf(chain []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(chain)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM certificate in the chain")
	}
	return x509.ParseCertificate(block.Bytes)
}
