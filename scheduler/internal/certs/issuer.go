package certs

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/go-acme/lego/v5/acme"
	"github.com/go-acme/lego/v5/acme/api"
	"github.com/go-acme/lego/v5/certcrypto"
	"github.com/go-acme/lego/v5/certificate"
	"github.com/go-acme/lego/v5/challenge"
	"github.com/go-acme/lego/v5/lego"
	"github.com/go-acme/lego/v5/registration"
	"go.uber.org/zap"

	"github.com/berthhq/berth/scheduler/internal/store"
	"github.com/berthhq/berth/scheduler/internal/vault"
)

// Issued is a certificate an ACME CA issued: the PEM chain (leaf first)
// and the PEM private key.
type Issued struct {
	Chain, Key []byte
}

// ErrRateLimited wraps a CA's refusal for a rate limit; RetryAfter says
// when it allows the next order.
type ErrRateLimited struct {
	RetryAfter time.Duration
	Err        error
}

func (e *ErrRateLimited) Error() string { return e.Err.Error() }
func (e *ErrRateLimited) Unwrap() error { return e.Err }

// Accounts is where the ACME account is kept.
type Accounts interface {
	ACMEAccount(ctx context.Context, directory, email string) (store.ACMEAccount, bool, error)
	LeaderTx(ctx context.Context, l store.Lease, fn func(ctx context.Context, tx *store.Tx) error) error
}

// ChallengeSolver publishes HTTP-01 answers for lbagents to serve, for app.
type ChallengeSolver interface {
	Solver(app string, l store.Lease) challenge.Provider
}

// ACME orders certificates from one ACME directory with lego, as one
// account (made on first use, its key kept encrypted in Postgres), proving
// control of each name over HTTP-01 through the lbagents.
type ACME struct {
	Directory, Email string
	// HTTP talks to the CA: trusting the system roots and --acme-ca-file.
	HTTP     *http.Client
	Vault    *vault.Vault
	Accounts Accounts
	Solver   ChallengeSolver
	Logger   *zap.Logger
}

// HTTPClient returns the client an ACME directory is reached with: the
// system's roots, plus the PEM certificates of caFile when set (a private
// CA, or a test CA such as Pebble).
func HTTPClient(caFile string) (*http.Client, error) {
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("--acme-ca-file: %w", err)
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--acme-ca-file %s: no PEM certificate in it", caFile)
		}
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	return &http.Client{Transport: tr, Timeout: 2 * time.Minute}, nil
}

// user is lego's view of the account.
type user struct {
	email string
	key   crypto.Signer
	reg   *acme.ExtendedAccount
}

func (u *user) GetEmail() string                       { return u.email }
func (u *user) GetRegistration() *acme.ExtendedAccount { return u.reg }
func (u *user) GetPrivateKey() crypto.Signer           { return u.key }

func (a *ACME) accountAAD() string { return "acme account " + a.Directory + " " + a.Email }

// Obtain orders a certificate for names on behalf of app. An account the
// CA no longer knows (a CA reset) is registered again once.
func (a *ACME) Obtain(ctx context.Context, l store.Lease, app string, names []string, replaces *x509.Certificate) (Issued, error) {
	for attempt := 0; ; attempt++ {
		out, err := a.obtain(ctx, l, app, names, replaces, attempt > 0)
		var pd *acme.ProblemDetails
		if attempt == 0 && errors.As(err, &pd) && pd.Type == acme.AccountDoesNotExistErrorType {
			a.Logger.Warn("the ACME CA does not know the stored account: registering again", zap.String("directory", a.Directory))
			continue
		}
		var rl *acme.RateLimitedError
		if errors.As(err, &rl) {
			return out, &ErrRateLimited{RetryAfter: rl.RetryAfter, Err: err}
		}
		return out, err
	}
}

func (a *ACME) obtain(ctx context.Context, l store.Lease, app string, names []string, replaces *x509.Certificate, register bool) (Issued, error) {
	u, err := a.account(ctx, l, register)
	if err != nil {
		return Issued{}, err
	}
	cfg := lego.NewConfig(u)
	cfg.CADirURL = a.Directory
	cfg.HTTPClient = a.HTTP
	cfg.UserAgent = "berth-scheduler"
	client, err := lego.NewClient(cfg)
	if err != nil {
		return Issued{}, fmt.Errorf("acme directory %s: %w", a.Directory, err)
	}
	if u.reg == nil {
		reg, err := client.Registration.Register(ctx, registration.RegisterOptions{TermsOfServiceAgreed: true})
		if err != nil {
			return Issued{}, fmt.Errorf("register an ACME account: %w", err)
		}
		u.reg = reg
		if err := a.saveAccount(ctx, l, u); err != nil {
			return Issued{}, err
		}
		a.Logger.Info("registered an ACME account", zap.String("directory", a.Directory), zap.String("account", reg.Location))
	}
	if err := client.Challenge.SetHTTP01Provider(a.Solver.Solver(app, l)); err != nil {
		return Issued{}, err
	}
	req := certificate.ObtainRequest{Domains: names, Bundle: true, KeyType: certcrypto.EC256}
	if replaces != nil { // ACME renewal information (RFC 9773): a renewal, not a new certificate
		if id, err := api.MakeARICertID(replaces); err == nil {
			req.ReplacesCertID = id
		}
	}
	res, err := client.Certificate.Obtain(ctx, req)
	if err != nil && req.ReplacesCertID != "" {
		var already *acme.AlreadyReplacedError
		if errors.As(err, &already) || isNotSupported(err) {
			req.ReplacesCertID = ""
			res, err = client.Certificate.Obtain(ctx, req)
		}
	}
	if err != nil {
		return Issued{}, err
	}
	return Issued{Chain: res.Certificate, Key: res.PrivateKey}, nil
}

func isNotSupported(err error) bool {
	var pd *acme.ProblemDetails
	return errors.As(err, &pd) && pd.HTTPStatus == http.StatusBadRequest && pd.Type == acme.MalformedErrorType
}

// account loads the stored account, or makes a key for a new one (its
// registration then happens in obtain). fresh ignores the stored URL.
func (a *ACME) account(ctx context.Context, l store.Lease, fresh bool) (*user, error) {
	stored, ok, err := a.Accounts.ACMEAccount(ctx, a.Directory, a.Email)
	if err != nil {
		return nil, err
	}
	u := &user{email: a.Email}
	if ok {
		pem, err := a.Vault.Open(stored.Key, a.accountAAD())
		switch {
		case errors.Is(err, vault.ErrWrongKey):
			// --cert-key-file was changed: the old account cannot be used,
			// and a new one costs nothing (obtain registers it and stores it
			// under the new key).
			a.Logger.Warn("the stored ACME account was sealed with another --cert-key-file: registering a new account", zap.Error(err))
		case err != nil:
			return nil, fmt.Errorf("acme account key: %w", err)
		default:
			u.key, err = certcrypto.ParsePEMPrivateKey(pem)
			clear(pem)
			if err != nil {
				return nil, fmt.Errorf("acme account key: %w", err)
			}
			if stored.URI != "" && !fresh {
				u.reg = &acme.ExtendedAccount{Location: stored.URI}
			}
			return u, nil
		}
	}
	if u.key, err = certcrypto.GeneratePrivateKey(certcrypto.EC256); err != nil {
		return nil, err
	}
	return u, nil
}

func (a *ACME) saveAccount(ctx context.Context, l store.Lease, u *user) error {
	pem := certcrypto.PEMEncode(u.key)
	defer clear(pem)
	sealed, err := a.Vault.Seal(pem, a.accountAAD())
	if err != nil {
		return err
	}
	return a.Accounts.LeaderTx(ctx, l, func(ctx context.Context, tx *store.Tx) error {
		return tx.PutACMEAccount(ctx, store.ACMEAccount{Directory: a.Directory, Email: a.Email, Key: sealed, URI: u.reg.Location})
	})
}
