package api

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"math"
	"net/http"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// CertificateReader reads the ACME certificates for GET /v1/certificates,
// without their keys. Called concurrently, one call per request.
type CertificateReader interface {
	CertificateInfos(ctx context.Context) ([]store.CertificateInfo, error)
}

var _ CertificateReader = (*store.Store)(nil)

// Certificate statuses (CertificateView.Status).
const (
	// CertPending: never issued yet (the first order is running, or failed
	// and is retried at retry_at).
	CertPending = "pending"
	// CertValid: issued, and not yet within the renewal window.
	CertValid = "valid"
	// CertRenewing: within --acme-renew-before of expiry: the leader
	// renews it (failures and retry_at say how that goes).
	CertRenewing = "renewing"
	// CertExpired: past not_after; lbagents no longer serve it.
	CertExpired = "expired"
)

// CertificateView is one app's ACME certificate as GET /v1/certificates
// shows it: never its key.
type CertificateView struct {
	App string `json:"app"`
	// Status is pending, valid, renewing or expired.
	Status string `json:"status"`
	// Names are the DNS names it covers (or, pending, the app's hosts).
	Names []string `json:"names"`
	// IssuerCN and IssuerOrg name who signed the leaf (its issuer's common
	// name and organization); empty when the chain does not parse.
	IssuerCN  string `json:"issuer_cn,omitempty"`
	IssuerOrg string `json:"issuer_org,omitempty"`
	// Serial is the leaf's serial number, in hex.
	Serial    string    `json:"serial,omitempty"`
	NotBefore time.Time `json:"not_before,omitzero"`
	NotAfter  time.Time `json:"not_after,omitzero"`
	// DaysLeft is whole days until not_after (negative once expired);
	// absent before the first issuance.
	DaysLeft *int `json:"days_left,omitempty"`
	// IssuedAt is when it was last issued or renewed.
	IssuedAt time.Time `json:"issued_at,omitzero"`
	// Failures counts the orders that failed since the last issuance;
	// RetryAt is when the next may start; LastError why the last failed.
	Failures  int       `json:"failures,omitempty"`
	RetryAt   time.Time `json:"retry_at,omitzero"`
	LastError string    `json:"last_error,omitempty"`
}

// maxIssuerText bounds the issuer names shown.
const maxIssuerText = 256

// certificates answers GET /v1/certificates: every certificate the store
// holds, and every app with routing.tls.acme that has none yet (pending),
// by app.
func (a *api) certificates(w http.ResponseWriter, r *http.Request) {
	infos, err := a.d.Certificates.CertificateInfos(r.Context())
	if err != nil {
		a.fail(w, err)
		return
	}
	apps, err := a.d.Apps.List(r.Context())
	if err != nil {
		a.fail(w, err)
		return
	}
	now := time.Now()
	out := make([]CertificateView, 0, len(infos))
	have := make(map[string]bool, len(infos))
	for _, c := range infos {
		have[c.App] = true
		out = append(out, certificateView(c, a.o.RenewBefore, now))
	}
	for _, app := range apps {
		s := app.Spec
		if have[app.Name] || s == nil || s.Routing.TLS == nil || !s.Routing.TLS.ACME {
			continue
		}
		names := append([]string{}, s.Routing.Hosts...)
		slices.Sort(names)
		out = append(out, CertificateView{App: app.Name, Status: CertPending, Names: names})
	}
	slices.SortFunc(out, func(x, y CertificateView) int { return strings.Compare(x.App, y.App) })
	writeJSON(w, http.StatusOK, out)
}

// certificateView views c at now; renewBefore is the renewal window (0:
// none known).
func certificateView(c store.CertificateInfo, renewBefore time.Duration, now time.Time) CertificateView {
	v := CertificateView{App: c.App, Names: c.Names, Serial: c.Serial, NotBefore: c.NotBefore, NotAfter: c.NotAfter, IssuedAt: c.IssuedAt,
		Failures: c.Failures, RetryAt: c.RetryAt, LastError: c.LastError, Status: CertPending}
	if v.Names == nil {
		v.Names = []string{}
	}
	if c.Chain == "" || c.NotAfter.IsZero() {
		return v
	}
	v.IssuerCN, v.IssuerOrg = issuer(c.Chain)
	days := int(math.Floor(c.NotAfter.Sub(now).Hours() / 24))
	v.DaysLeft = &days
	switch {
	case !now.Before(c.NotAfter):
		v.Status = CertExpired
	case renewBefore > 0 && c.NotAfter.Sub(now) <= renewBefore:
		v.Status = CertRenewing
	default:
		v.Status = CertValid
	}
	return v
}

// issuer returns the common name and first organization of the issuer of
// the chain's leaf (its first certificate), as printable text; empty when
// it does not parse.
func issuer(chain string) (cn, org string) {
	block, _ := pem.Decode([]byte(chain))
	if block == nil || block.Type != "CERTIFICATE" {
		return "", ""
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return "", ""
	}
	cn = printable(leaf.Issuer.CommonName)
	if len(leaf.Issuer.Organization) > 0 {
		org = printable(leaf.Issuer.Organization[0])
	}
	return cn, org
}

// printable is s without control or other unprintable characters, at
// most maxIssuerText bytes: a CA's names reach terminals and pages.
func printable(s string) string {
	s = strings.Map(func(r rune) rune {
		if !unicode.IsPrint(r) {
			return -1
		}
		return r
	}, s)
	return msg.Truncate(s, maxIssuerText)
}
