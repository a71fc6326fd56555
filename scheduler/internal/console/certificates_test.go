package console

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/scheduler/internal/api"
	"github.com/berthhq/berth/scheduler/internal/auth"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// certChain makes a chain whose leaf, for names, is signed by a CA named
// cn and org, valid from notBefore to notAfter.
func certChain(t *testing.T, cn, org string, notBefore, notAfter time.Time, names ...string) string {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn, Organization: []string{org}},
		NotBefore: notBefore, NotAfter: notAfter.Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), DNSNames: names, NotBefore: notBefore, NotAfter: notAfter}
	der, err := x509.CreateCertificate(rand.Reader, leaf, ca, key.Public(), caKey)
	require.NoError(t, err)
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

const certHostileError = `acme: urn:ietf:params:acme:error:dns: </small><script>alert(1)</script>`

// certFixture applies fresh (ACME, never issued) and stores the
// certificates of web (valid, its issuer's name carrying markup), old
// (renewing, failing with a CA's hostile error), gone (expired) and new
// (never issued, failing).
func certFixture(t *testing.T, r *rig, now time.Time) {
	t.Helper()
	r.apply("name: fresh\nimage: web:1\nport: 8080\nrouting: {hosts: [b.example.com, a.example.com], tls: {acme: true}}\n")
	key := []byte("sealed-private-key-bytes")
	certs := []store.Certificate{
		{App: "web", Names: []string{"web.example.com", "www.example.com"}, Chain: certChain(t, "<b>R11</b>", "Let's Encrypt", now.Add(-24*time.Hour), now.Add(60*24*time.Hour+time.Hour), "web.example.com"),
			Key: key, Serial: "3f1a2b", NotBefore: now.Add(-24 * time.Hour), NotAfter: now.Add(60*24*time.Hour + time.Hour), IssuedAt: now.Add(-24 * time.Hour)},
		{App: "old", Names: []string{"old.example.com"}, Chain: certChain(t, "R10", "Let's Encrypt", now.Add(-80*24*time.Hour), now.Add(10*24*time.Hour+time.Hour), "old.example.com"),
			Key: key, Serial: "ab", NotBefore: now.Add(-80 * 24 * time.Hour), NotAfter: now.Add(10*24*time.Hour + time.Hour), IssuedAt: now.Add(-80 * 24 * time.Hour),
			Failures: 2, RetryAt: now.Add(time.Hour), LastError: certHostileError},
		{App: "gone", Names: []string{"gone.example.com"}, Chain: certChain(t, "R10", "Let's Encrypt", now.Add(-100*24*time.Hour), now.Add(-time.Hour), "gone.example.com"),
			Key: key, Serial: "cd", NotBefore: now.Add(-100 * 24 * time.Hour), NotAfter: now.Add(-time.Hour), IssuedAt: now.Add(-100 * 24 * time.Hour)},
		{App: "new", Names: []string{"new.example.com"}, Failures: 1, RetryAt: now.Add(-time.Minute), LastError: "acme: rate limited"},
	}
	r.asLeader(func(ctx context.Context, tx *store.Tx) error {
		for _, c := range certs {
			if err := tx.PutCertificate(ctx, c); err != nil {
				return err
			}
		}
		return nil
	})
}

// TestCertificatesPage: every certificate, problems first (expired,
// failing, renewing, pending, then valid), with its status, names,
// issuer, expiry and days left, last renewal and failures; a CA's words
// are text; a read token sees them.
func TestCertificatesPage(t *testing.T) {
	t.Parallel()
	now := time.Now().UTC().Truncate(time.Second)
	r := appRig(t, api.Options{ACME: true, RenewBefore: 30 * 24 * time.Hour}, nil)
	certFixture(t, r, now)
	c := r.browser()
	require.Equal(t, http.StatusSeeOther, r.login(c, r.token("viewer", auth.Read)).StatusCode)
	code, page := appGet(t, r, c, "/ui/certificates")
	require.Equal(t, http.StatusOK, code, page)
	require.Contains(t, page, `<body data-live="refresh"`)
	require.Contains(t, page, `<a href="/ui/certificates" aria-current="page">Certificates</a>`)
	require.NotContains(t, page, "sealed-private-key-bytes")

	var order []int
	for _, app := range []string{"gone", "new", "old", "fresh", "web"} {
		i := strings.Index(page, `data-name="`+app+`"`)
		require.Positive(t, i, app)
		order = append(order, i)
	}
	require.IsIncreasing(t, order, "expired, then failing (by app), pending, valid")

	row := func(app string) string {
		i := strings.Index(page, `data-name="`+app+`"`)
		return page[i : i+strings.Index(page[i:], "</tr>")]
	}
	web := row("web")
	require.Contains(t, page, `<tr class="ok" data-name="web">`)
	require.Contains(t, web, `<td class="name"><a href="/ui/apps/web">web</a></td>`)
	require.Contains(t, web, `<td class="good">valid</td>`)
	require.Contains(t, web, "web.example.com<br>www.example.com<br>")
	require.Contains(t, web, "<td>&lt;b&gt;R11&lt;/b&gt; (Let&#39;s Encrypt)</td>", "the issuer's name is text")
	require.Contains(t, web, now.Add(60*24*time.Hour+time.Hour).Format("2006-01-02 15:04Z")+`<br><small class="muted">60 days left</small>`)
	require.Contains(t, web, "<td>"+now.Add(-24*time.Hour).Format("2006-01-02 15:04Z")+"</td>")
	require.Contains(t, web, "<td>0</td>")

	old := row("old")
	require.Contains(t, page, `<tr class="trouble" data-name="old">`)
	require.Contains(t, old, `<td class="bad">renewing</td>`)
	require.Contains(t, old, `<small class="bad">10 days left</small>`)
	require.Contains(t, old, `<span class="bad">2</span><br><small>next try `+now.Add(time.Hour).Format("2006-01-02 15:04:05Z")+` (in `)
	require.Contains(t, old, `<small class="bad">acme: urn:ietf:params:acme:error:dns: &lt;/small&gt;&lt;script&gt;alert(1)&lt;/script&gt;</small>`)

	gone := row("gone")
	require.Contains(t, gone, `<td class="bad">expired</td>`)
	require.Contains(t, gone, `<small class="bad">expired less than a day ago</small>`)

	nw := row("new")
	require.Contains(t, nw, `<td class="bad">pending</td>`)
	require.Contains(t, nw, `<span class="muted">not issued yet</span>`)
	require.Contains(t, nw, `<span class="muted">never</span>`)
	require.Contains(t, nw, "(due)")
	require.Contains(t, nw, "acme: rate limited")

	fresh := row("fresh")
	require.Contains(t, fresh, `<td class="bad">pending</td>`)
	require.Contains(t, fresh, "a.example.com<br>b.example.com<br>")

	require.NotContains(t, page, "<b>R11")
	require.NotContains(t, page, "<script>alert")
	require.Equal(t, 1, strings.Count(page, "<script"), "the console's one script file")
}

// TestCertificatesPageEmptyAndAPIError: no certificate says so; an API
// failure is the page's, in the API's words.
func TestCertificatesPageEmptyAndAPIError(t *testing.T) {
	t.Parallel()
	r := appRig(t, api.Options{}, nil)
	c := r.browser()
	r.login(c, admin)
	code, page := appGet(t, r, c, "/ui/certificates")
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, page, "No certificate: no app asks an ACME CA for one")

	r = appRig(t, api.Options{}, failing(map[string]api.Error{"/v1/certificates": {Error: api.UnavailableMessage}},
		map[string]int{"/v1/certificates": http.StatusServiceUnavailable}))
	c = r.browser()
	r.login(c, admin)
	code, page = appGet(t, r, c, "/ui/certificates")
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Contains(t, page, `<p class="error" role="alert">cannot read the certificates: postgres is unreachable`)
	require.NotContains(t, page, "No certificate")
}

// TestAppPageCertificate: an ACME app's page shows its certificate's
// state from GET /v1/certificates; when that read fails, the section
// says why and the page still shows.
func TestAppPageCertificate(t *testing.T) {
	t.Parallel()
	now := time.Now().UTC().Truncate(time.Second)
	r := appRig(t, api.Options{ACME: true, RenewBefore: 30 * 24 * time.Hour}, nil)
	certFixture(t, r, now)
	r.apply("name: old\nimage: old:1\nport: 8080\nrouting: {hosts: [old.example.com], tls: {acme: true, redirect_http: true}}\n")
	c := r.browser()
	r.login(c, r.token("viewer", auth.Read))
	code, page := appGet(t, r, c, "/ui/apps/old")
	require.Equal(t, http.StatusOK, code, page)
	i := strings.Index(page, "<h2>Certificate</h2>")
	require.Positive(t, i)
	sec := page[i : i+strings.Index(page[i:], "</table>")]
	require.Contains(t, sec, "from an ACME CA")
	require.Contains(t, sec, `<tr class="trouble"><th>Status</th><td class="bad">renewing <small class="muted">(<a href="/ui/certificates">every certificate</a>)</small></td></tr>`)
	require.Contains(t, sec, "<tr><th>Issuer</th><td>R10 (Let&#39;s Encrypt)</td></tr>")
	require.Contains(t, sec, now.Add(10*24*time.Hour+time.Hour).Format("2006-01-02 15:04Z")+` <small class="bad">10 days left</small>`)
	require.Contains(t, sec, "<tr><th>Last renewal</th><td>"+now.Add(-80*24*time.Hour).Format("2006-01-02 15:04Z")+"</td></tr>")
	require.Contains(t, sec, `<tr><th>Failures</th><td class="bad">2 · next try `)
	require.Contains(t, sec, `&lt;/small&gt;&lt;script&gt;alert(1)&lt;/script&gt;`)
	require.NotContains(t, page, "<script>alert")

	// fresh is never issued: pending, with no expiry yet.
	code, page = appGet(t, r, c, "/ui/apps/fresh")
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, page, `<td class="bad">pending <small`)
	require.Contains(t, page, `<span class="muted">not issued yet</span>`)

	r = appRig(t, api.Options{}, failing(map[string]api.Error{"/v1/certificates": {Error: "internal error; see the scheduler's log"}},
		map[string]int{"/v1/certificates": http.StatusInternalServerError}))
	r.apply("name: old\nimage: old:1\nport: 8080\nrouting: {hosts: [old.example.com], tls: {acme: true}}\n")
	c = r.browser()
	r.login(c, admin)
	code, page = appGet(t, r, c, "/ui/apps/old")
	require.Equal(t, http.StatusOK, code, "the other sections show")
	require.Contains(t, page, `<p class="error">cannot read the certificate: internal error; see the scheduler&#39;s log</p>`)
	require.Contains(t, page, "<h2>Generations</h2>")
}
