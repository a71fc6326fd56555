package testrig

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// Viewport is the size of the browser's window and of every screenshot's
// width: docs/console.md's pictures all have it.
const (
	ViewportWidth  = 1280
	ViewportHeight = 800
)

// ScreenshotsEnv names the directory where Browser.Screenshot writes its
// PNGs; unset, they are taken and dropped.
const ScreenshotsEnv = "BERTH_SCREENSHOTS"

// ChromiumBin returns Debian's chromium, or stops the test (skip, or fail
// in CI) when it is not installed.
func ChromiumBin(t testing.TB) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if path, err := exec.LookPath(name); err == nil {
			return path
		}
	}
	if _, err := os.Stat("/usr/bin/chromium"); err == nil {
		return "/usr/bin/chromium"
	}
	Require(t, false, "chromium not found", "apt-get install chromium")
	return ""
}

// Browser is one headless Chromium for one test, with a fresh profile,
// ended when the test ends. It records what a page should never do: an
// uncaught exception, an error on the console, or a Content-Security-Policy
// violation (which Chromium reports both on its log and as a
// securitypolicyviolation event in the page).
type Browser struct {
	t testing.TB
	// Ctx runs actions in the browser's one tab (chromedp.Do, chromedp.Run).
	Ctx context.Context

	mu       sync.Mutex
	problems []string
	// allowed are substrings of log entries that the test expects (a 403
	// it provoked); every other error is a problem.
	allowed []string
}

// cspProbe runs in every document before its own scripts: it records the
// page's Content-Security-Policy violations where the test reads them.
// The browser injects it through the DevTools protocol, which a page's
// CSP does not apply to.
const cspProbe = `window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", function (e) {
  window.__cspViolations.push(e.violatedDirective + " blocked " + (e.blockedURI || "inline") + " at " + e.sourceFile + ":" + e.lineNumber);
});`

// NewBrowser starts Chromium headless, its window ViewportWidth ×
// ViewportHeight. It runs as root in CI's containers, where Chromium's
// sandbox cannot start: --no-sandbox (the pages it opens are the test's
// own). /dev/shm is small in containers: --disable-dev-shm-usage.
func NewBrowser(t testing.TB) *Browser {
	t.Helper()
	bin := ChromiumBin(t)
	profile := t.TempDir()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(bin),
		chromedp.UserDataDir(profile),
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Headless,
		chromedp.Flag("headless", "new"),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("no-proxy-server", true),
		chromedp.Flag("password-store", "basic"),
		chromedp.WindowSize(ViewportWidth, ViewportHeight),
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	// The browser asks every origin for /favicon.ico on its own: a 404
	// there is no page's fault.
	b := &Browser{t: t, allowed: []string{"/favicon.ico"}}
	ctx, cancel := chromedp.NewContext(allocCtx, chromedp.WithListener(b.watch))
	b.Ctx = ctx
	t.Cleanup(func() {
		// Closes the tab and ends the browser process, then removes the
		// profile (t.TempDir).
		cancel()
		cancelAlloc()
	})
	// The first action starts the browser, which lives as long as the
	// context it ran with: ctx itself, not one with a deadline.
	if err := chromedp.Do(ctx,
		chromedp.EmulateViewport(ViewportWidth, ViewportHeight),
		func(ctx context.Context, tg *chromedp.Target) (chromedp.Void, error) {
			_, err := chromedp.Call(ctx, page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{Source: cspProbe})
			return chromedp.Void{}, err
		},
	); err != nil {
		t.Fatalf("start chromium (%s): %v", bin, err)
	}
	return b
}

// watch records the events that mean a page went wrong. It runs on the
// browser's reading goroutine: it only appends.
func (b *Browser) watch(ev any) {
	var problem string
	switch ev := ev.(type) {
	case *runtime.EventExceptionThrown:
		d := ev.ExceptionDetails
		problem = "uncaught exception: " + d.Text
		if d.Exception != nil && d.Exception.Description != "" {
			problem += ": " + d.Exception.Description
		}
		problem += fmt.Sprintf(" (%s:%d)", d.URL, d.LineNumber)
	case *runtime.EventConsoleAPICalled:
		if ev.Type == runtime.ConsoleAPICalledTypeError || ev.Type == runtime.ConsoleAPICalledTypeAssert {
			var parts []string
			for _, a := range ev.Args {
				if a.Description != "" {
					parts = append(parts, a.Description)
				} else {
					parts = append(parts, string(a.Value))
				}
			}
			problem = "console." + string(ev.Type) + ": " + strings.Join(parts, " ")
		}
	case *log.EventEntryAdded:
		e := ev.Entry
		if e.Level == log.EntryLevelError || e.Source == log.EntrySourceSecurity {
			problem = fmt.Sprintf("browser log (%s, %s): %s %s", e.Source, e.Level, e.Text, e.URL)
		}
	}
	if problem == "" {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, a := range b.allowed {
		if strings.Contains(problem, a) {
			return
		}
	}
	b.problems = append(b.problems, problem)
}

// Allow makes log entries holding text expected (a refusal the test
// provokes shows as "the server responded with a status of 403").
func (b *Browser) Allow(text string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.allowed = append(b.allowed, text)
}

// Problems are the exceptions, console errors and CSP violations seen so
// far, those the page recorded included.
func (b *Browser) Problems() []string {
	b.t.Helper()
	var inPage []string
	ctx, cancel := context.WithTimeout(b.Ctx, 10*time.Second)
	defer cancel()
	got, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](`window.__cspViolations || []`))
	if err != nil {
		inPage = []string{"cannot read the page's CSP violations: " + err.Error()}
	}
	for _, v := range got {
		inPage = append(inPage, "CSP violation: "+v)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return append(append([]string(nil), b.problems...), inPage...)
}

// RequireNoProblems fails the test when a page threw, logged an error or
// violated its CSP.
func (b *Browser) RequireNoProblems() {
	b.t.Helper()
	if p := b.Problems(); len(p) > 0 {
		b.t.Fatalf("the browser saw %d problem(s):\n  %s", len(p), strings.Join(p, "\n  "))
	}
}

// Screenshot captures the whole page (the viewport's width, the page's
// height) as a PNG and, when BERTH_SCREENSHOTS names a directory, writes
// it there as name.png.
func (b *Browser) Screenshot(name string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.Ctx, 30*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Fatalf("screenshot %s: %v", name, err)
	}
	if len(png) < 8 || string(png[1:4]) != "PNG" {
		b.t.Fatalf("screenshot %s: not a PNG (%d bytes)", name, len(png))
	}
	dir := os.Getenv(ScreenshotsEnv)
	if dir == "" {
		return
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.t.Fatalf("screenshot %s: %v", name, err)
	}
	path := filepath.Join(dir, name+".png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		b.t.Fatalf("screenshot %s: %v", name, err)
	}
	b.t.Logf("screenshot: %s (%d KB)", path, len(png)>>10)
}
