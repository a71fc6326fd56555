package console

import (
	"cmp"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/berthhq/berth/scheduler/internal/api"
)

// The certificates page (GET /ui/certificates) shows every app's ACME
// certificate as GET /v1/certificates does: its status, names, issuer,
// expiry, last renewal and the failures of its orders. Self-signed and
// file certificates live on the edge nodes and are not listed.

// CertRow is one certificate on the certificates page (and the app
// page's certificate section).
type CertRow struct {
	api.CertificateView
	// Issuer is the issuer's common name and organization, as one text.
	Issuer string
	// Days says how long is left ("12 days left", "expired 3 days ago");
	// empty before the first issuance.
	Days string
	// Retry says when the next order may start, relative to now.
	Retry string
	// Problem: not valid, or an order failed since the last issuance.
	Problem bool
	// rank orders the page: expired, failing, renewing, pending, valid.
	rank int
}

type certificatesPage struct {
	Base
	Read         bool
	Certificates []CertRow
}

// certificates lists the certificates, problems first.
func (c *console) certificates(w http.ResponseWriter, r *http.Request) {
	page := certificatesPage{Base: base(r, "certificates")}
	page.Live = "refresh"
	var vs []api.CertificateView
	if err := c.call(r, http.MethodGet, "/v1/certificates", nil, &vs); err != nil {
		code, text := c.apiMessage(err)
		page.Error = "cannot read the certificates: " + text
		c.render(w, code, "certificates.html", page)
		return
	}
	page.Read = true
	now := c.o.Now()
	for _, v := range vs {
		page.Certificates = append(page.Certificates, certRow(v, now))
	}
	slices.SortStableFunc(page.Certificates, func(x, y CertRow) int {
		return cmp.Or(cmp.Compare(x.rank, y.rank), strings.Compare(x.App, y.App))
	})
	c.render(w, http.StatusOK, "certificates.html", page)
}

func certRow(v api.CertificateView, now time.Time) CertRow {
	row := CertRow{CertificateView: v, Issuer: v.IssuerCN}
	if v.IssuerOrg != "" {
		row.Issuer = strings.TrimSpace(row.Issuer + " (" + v.IssuerOrg + ")")
	}
	if d := v.DaysLeft; d != nil {
		// DaysLeft is rounded down: -1 is expired less than a day ago.
		switch {
		case *d == -1:
			row.Days = "expired less than a day ago"
		case *d < 0:
			row.Days = "expired " + certDays(-*d-1) + " ago"
		case *d == 0:
			row.Days = "less than a day left"
		default:
			row.Days = certDays(*d) + " left"
		}
	}
	if !v.RetryAt.IsZero() {
		if left := v.RetryAt.Sub(now); left > 0 {
			row.Retry = "in " + appAge(now, v.RetryAt)
		} else {
			row.Retry = "due"
		}
	}
	failing := v.Failures > 0 || v.LastError != ""
	switch {
	case v.Status == api.CertExpired:
		row.rank = 0
	case failing:
		row.rank = 1
	case v.Status == api.CertRenewing:
		row.rank = 2
	case v.Status == api.CertValid:
		row.rank = 4
	default: // pending, or a status this console does not know
		row.rank = 3
	}
	row.Problem = row.rank < 4
	return row
}

// certDays is n days in words.
func certDays(n int) string {
	if n == 1 {
		return "1 day"
	}
	return fmt.Sprintf("%d days", n)
}
