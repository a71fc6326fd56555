package testrig

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"
)

// TestBrowserSeesWhatAPageDoesWrong serves a page under a strict CSP
// that breaks it in each way the browser tests must catch: an inline
// script (blocked by the CSP), a script that throws, and console.error.
// A clean page under the same CSP shows none.
func TestBrowserSeesWhatAPageDoesWrong(t *testing.T) {
	mux := http.NewServeMux()
	page := func(body string) http.HandlerFunc {
		return func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Security-Policy", "default-src 'self'; script-src 'self'")
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			_, _ = io.WriteString(w, "<!doctype html><title>t</title><body>"+body+"<p id=done>done</p></body>")
		}
	}
	mux.HandleFunc("/clean", page(`<script src="/ok.js"></script>`))
	mux.HandleFunc("/broken", page(`<script>window.inline = 1</script><script src="/bad.js"></script>`))
	mux.HandleFunc("/favicon.ico", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) })
	js := func(src string) http.HandlerFunc {
		return func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/javascript")
			_, _ = io.WriteString(w, src)
		}
	}
	mux.HandleFunc("/ok.js", js(`document.body.dataset.ran = "yes";`))
	mux.HandleFunc("/bad.js", js(`console.error("bad thing"); throw new Error("boom");`))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)

	b := NewBrowser(t)
	ctx, cancel := context.WithTimeout(b.Ctx, 60*time.Second)
	defer cancel()
	require.NoError(t, chromedp.Do(ctx, chromedp.Navigate(srv.URL+"/clean"), chromedp.WaitVisible(chromedp.ID("done"))))
	ran, err := chromedp.Run(ctx, chromedp.Poll[string](`document.body.dataset.ran`))
	require.NoError(t, err)
	require.Equal(t, "yes", ran)
	require.Empty(t, b.Problems(), "a clean page")
	b.Screenshot("clean")

	require.NoError(t, chromedp.Do(ctx, chromedp.Navigate(srv.URL+"/broken"), chromedp.WaitVisible(chromedp.ID("done"))))
	_, err = chromedp.Run(ctx, chromedp.Poll[bool](`window.__cspViolations.length > 0`))
	require.NoError(t, err)
	all := strings.Join(b.Problems(), "\n")
	t.Logf("problems seen:\n%s", all)
	require.Contains(t, all, "CSP violation: script-src")
	require.Contains(t, all, "boom")
	require.Contains(t, all, "bad thing")
}
