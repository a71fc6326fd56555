package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Certificate is an app's ACME certificate and its renewal state. Key is
// the private key as the caller encrypted it; the store never sees it in
// the clear. A certificate never issued has an empty Chain.
type Certificate struct {
	App       string
	Names     []string
	Chain     string
	Key       []byte
	Serial    string
	NotBefore time.Time
	NotAfter  time.Time
	IssuedAt  time.Time
	// Failures counts the attempts that failed since the last issuance;
	// RetryAt is when the next may start, LastError why the last failed.
	Failures  int
	RetryAt   time.Time
	LastError string
}

// ACMEAccount is the account the leader orders certificates with. Key is
// its private key, encrypted by the caller; URI its account URL at the CA.
type ACMEAccount struct {
	Directory, Email string
	Key              []byte
	URI              string
}

// Certificates returns every certificate, by app.
func (s *Store) Certificates(ctx context.Context) (map[string]Certificate, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT app, names, chain, key, serial, not_before, not_after, issued_at, failures, retry_at, last_error
		FROM certificates`)
	if err != nil {
		return nil, fmt.Errorf("certificates: %w", redact(err))
	}
	out := map[string]Certificate{}
	var c Certificate
	var nb, na, ia, ra *time.Time
	if _, err := pgx.ForEachRow(rows, []any{&c.App, &c.Names, &c.Chain, &c.Key, &c.Serial, &nb, &na, &ia, &c.Failures, &ra, &c.LastError}, func() error {
		c.NotBefore, c.NotAfter, c.IssuedAt, c.RetryAt = orZero(nb), orZero(na), orZero(ia), orZero(ra)
		out[c.App] = c
		return nil
	}); err != nil {
		return nil, fmt.Errorf("certificates: %w", redact(err))
	}
	return out, nil
}

// CertificateInfo is an app's certificate as anyone who may read the
// apps may see it: Certificate without the key. A certificate never
// issued has an empty Chain.
type CertificateInfo struct {
	App       string
	Names     []string
	Chain     string
	Serial    string
	NotBefore time.Time
	NotAfter  time.Time
	IssuedAt  time.Time
	Failures  int
	RetryAt   time.Time
	LastError string
}

// CertificateInfos returns every certificate without its key, by app
// name. The key column is not even read, so that no reader of the API can
// be handed it by mistake.
func (s *Store) CertificateInfos(ctx context.Context) ([]CertificateInfo, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT app, names, chain, serial, not_before, not_after, issued_at, failures, retry_at, last_error
		FROM certificates ORDER BY app`)
	if err != nil {
		return nil, fmt.Errorf("certificates: %w", redact(err))
	}
	var out []CertificateInfo
	var c CertificateInfo
	var nb, na, ia, ra *time.Time
	if _, err := pgx.ForEachRow(rows, []any{&c.App, &c.Names, &c.Chain, &c.Serial, &nb, &na, &ia, &c.Failures, &ra, &c.LastError}, func() error {
		c.NotBefore, c.NotAfter, c.IssuedAt, c.RetryAt = orZero(nb), orZero(na), orZero(ia), orZero(ra)
		out = append(out, c)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("certificates: %w", redact(err))
	}
	return out, nil
}

// PutCertificate stores c, replacing the app's row.
func (t *Tx) PutCertificate(ctx context.Context, c Certificate) error {
	_, err := t.tx.Exec(ctx, `
		INSERT INTO certificates (app, names, chain, key, serial, not_before, not_after, issued_at, failures, retry_at, last_error, updated_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, now())
		ON CONFLICT (app) DO UPDATE SET names = $2, chain = $3, key = $4, serial = $5, not_before = $6, not_after = $7,
			issued_at = $8, failures = $9, retry_at = $10, last_error = $11, updated_at = now()`,
		c.App, c.Names, c.Chain, c.Key, c.Serial, orNil(c.NotBefore), orNil(c.NotAfter), orNil(c.IssuedAt), c.Failures, orNil(c.RetryAt), c.LastError)
	if err != nil {
		return fmt.Errorf("put certificate of %s: %w", c.App, redact(err))
	}
	return nil
}

// DeleteCertificate forgets app's certificate.
func (t *Tx) DeleteCertificate(ctx context.Context, app string) error {
	if _, err := t.tx.Exec(ctx, `DELETE FROM certificates WHERE app = $1`, app); err != nil {
		return fmt.Errorf("delete certificate of %s: %w", app, redact(err))
	}
	return nil
}

// ACMEOrder is one ACME order as it started.
type ACMEOrder struct {
	App       string
	Names     []string
	Reason    string
	StartedAt time.Time
}

// ACMEOrderRetention is how long AddACMEOrder keeps an order: Let's
// Encrypt's window for certificates per registered domain.
const ACMEOrderRetention = 7 * 24 * time.Hour

// ACMEOrdersSince returns when each order recorded at or after since
// started, oldest first.
func (s *Store) ACMEOrdersSince(ctx context.Context, since time.Time) ([]time.Time, error) {
	rows, err := s.pool.Query(ctx, `SELECT started_at FROM acme_orders WHERE started_at >= $1 ORDER BY started_at`, since)
	if err != nil {
		return nil, fmt.Errorf("acme orders: %w", redact(err))
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (time.Time, error) {
		var t time.Time
		err := r.Scan(&t)
		return t.UTC(), err
	})
	if err != nil {
		return nil, fmt.Errorf("acme orders: %w", redact(err))
	}
	return out, nil
}

// AddACMEOrder records o, and forgets the orders that started more than
// ACMEOrderRetention before it.
func (t *Tx) AddACMEOrder(ctx context.Context, o ACMEOrder) error {
	if _, err := t.tx.Exec(ctx, `INSERT INTO acme_orders (app, names, reason, started_at) VALUES ($1, $2, $3, $4)`,
		o.App, o.Names, o.Reason, o.StartedAt); err != nil {
		return fmt.Errorf("record the acme order of %s: %w", o.App, redact(err))
	}
	if _, err := t.tx.Exec(ctx, `DELETE FROM acme_orders WHERE started_at < $1`, o.StartedAt.Add(-ACMEOrderRetention)); err != nil {
		return fmt.Errorf("prune acme orders: %w", redact(err))
	}
	return nil
}

// ACMEAccount returns the account for directory and email, ok false when
// there is none yet.
func (s *Store) ACMEAccount(ctx context.Context, directory, email string) (a ACMEAccount, ok bool, err error) {
	a = ACMEAccount{Directory: directory, Email: email}
	err = s.pool.QueryRow(ctx, `SELECT key, uri FROM acme_accounts WHERE directory = $1 AND email = $2`, directory, email).Scan(&a.Key, &a.URI)
	if errors.Is(err, pgx.ErrNoRows) {
		return a, false, nil
	}
	if err != nil {
		return a, false, fmt.Errorf("acme account: %w", redact(err))
	}
	return a, true, nil
}

// PutACMEAccount stores a, replacing the row for its directory and email.
func (t *Tx) PutACMEAccount(ctx context.Context, a ACMEAccount) error {
	_, err := t.tx.Exec(ctx, `
		INSERT INTO acme_accounts (directory, email, key, uri) VALUES ($1, $2, $3, $4)
		ON CONFLICT (directory, email) DO UPDATE SET key = $3, uri = $4`, a.Directory, a.Email, a.Key, a.URI)
	if err != nil {
		return fmt.Errorf("put acme account: %w", redact(err))
	}
	return nil
}

func orZero(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return t.UTC()
}

func orNil(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}
