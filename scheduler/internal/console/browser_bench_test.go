package console

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
	"go.uber.org/zap"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/internal/testrig"
	"github.com/berthhq/berth/scheduler/internal/api"
	"github.com/berthhq/berth/scheduler/internal/auth"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// The console's overview at scale, measured in headless Chromium
// (docs/benchmarks.md, "Web console"): 1,000 apps × 3 instances recorded
// in Postgres (no containers), the console and the API in process, as a
// replica serves them. It lives here, not in bench/, because Go's
// internal rule keeps the console's package to the scheduler's tree.
//
//	go test -run '^$' -bench OverviewInBrowser -benchtime 1x ./scheduler/internal/console
//
// BERTH_BENCH_APPS changes the number of apps (default 1,000).

// benchProbe runs in every document before its scripts (injected over
// the DevTools protocol, which the page's CSP does not apply to): it
// stamps when DOMContentLoaded fired and the first frame painted after
// it, and records the main thread's long tasks and how late a 50 ms
// interval runs, the responsiveness a user feels.
const benchProbe = `(function () {
  window.__bench = { longest: 0, longTasks: 0, late: 0, ticks: 0, refreshes: 0, events: 0 };
  // Counts the live events the page's stream delivers.
  const Native = window.EventSource;
  window.EventSource = function (url) {
    const es = new Native(url);
    es.addEventListener("event", function () { window.__bench.events++; });
    return es;
  };
  window.EventSource.prototype = Native.prototype;
  window.EventSource.CLOSED = Native.CLOSED;
  document.addEventListener("DOMContentLoaded", function () {
    window.__bench.dcl = performance.now();
    requestAnimationFrame(function () {
      // The frame after DOMContentLoaded is drawn when this task runs.
      setTimeout(function () { window.__bench.painted = performance.now(); }, 0);
    });
    new MutationObserver(function () { window.__bench.refreshes++; })
      .observe(document.body, { attributes: true, attributeFilter: ["data-refreshed"] });
  });
  new PerformanceObserver(function (list) {
    for (const e of list.getEntries()) {
      window.__bench.longTasks++;
      window.__bench.longest = Math.max(window.__bench.longest, e.duration);
    }
  }).observe({ type: "longtask" });
  let last = performance.now();
  setInterval(function () {
    const now = performance.now();
    window.__bench.late = Math.max(window.__bench.late, now - last - 50);
    window.__bench.ticks++;
    last = now;
  }, 50);
})();`

// loadTiming is one page load as the browser measured it.
type loadTiming struct {
	// Response is the navigation's start to the last byte of the HTML.
	Response float64 `json:"response"`
	// DCL is the start to DOMContentLoaded, Painted to the first frame
	// after it; Render is Painted - DCL.
	DCL     float64 `json:"dcl"`
	Painted float64 `json:"painted"`
	// Bytes is the HTML's size (decoded body).
	Bytes int `json:"bytes"`
	// Rows is how many app rows the page shows.
	Rows int `json:"rows"`
}

func (l loadTiming) render() float64 { return l.Painted - l.DCL }

// responsiveness is what the probe saw while events arrived.
type responsiveness struct {
	Longest   float64 `json:"longest"`
	LongTasks int     `json:"longTasks"`
	Late      float64 `json:"late"`
	Ticks     int     `json:"ticks"`
	Refreshes int     `json:"refreshes"`
	Events    int     `json:"events"`
	// Fetches are the durations of the page's refetches (ms).
	Fetches []float64 `json:"fetches"`
	Rows    int       `json:"rows"`
}

func BenchmarkOverviewInBrowser(b *testing.B) {
	apps := 1000
	if n, err := strconv.Atoi(os.Getenv("BERTH_BENCH_APPS")); err == nil && n > 0 {
		apps = n
	}
	ctx := context.Background()
	st, err := store.Open(ctx, testrig.Postgres(b))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(st.Close)
	if _, err := st.Migrate(ctx); err != nil {
		b.Fatal(err)
	}
	seedStart := time.Now()
	seedApps(b, st, apps)
	report("seeded %d apps and %d instances in %s", apps, 3*apps, time.Since(seedStart).Round(time.Millisecond))

	logger := zap.NewNop()
	keys := auth.NewKeyring(st, auth.Config{Bootstrap: admin, MissInterval: time.Nanosecond}, logger)
	deps := api.Deps{Apps: st, Changes: st, Events: st, Decisions: st, DB: st, Claims: st, Hosts: st, History: st, Tokens: st}
	live := NewHub()
	h, err := New(Options{Keyring: keys, API: api.New(deps, api.Options{Keyring: keys}, logger), Live: live}, logger)
	if err != nil {
		b.Fatal(err)
	}

	// The floors, on the same server: the overview's own HTML served as a
	// static file (what the page costs the browser alone), and the
	// events-mode page (data-live="events" with an empty table) that the
	// events page's script fills, until the events page exists.
	var overviewHTML []byte
	mux := http.NewServeMux()
	mux.Handle("/ui/", h)
	static := func(body func() []byte) http.HandlerFunc {
		return func(w http.ResponseWriter, _ *http.Request) {
			// The console's headers: no-store keeps the page out of the
			// back/forward cache, as the console's own.
			w.Header().Set("Content-Security-Policy", CSP)
			w.Header().Set("Cache-Control", "no-store")
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			_, _ = w.Write(body())
		}
	}
	mux.HandleFunc("GET /ui/bench/floor", static(func() []byte { return overviewHTML }))
	mux.HandleFunc("GET /ui/bench/events", static(func() []byte {
		return []byte(`<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Events · Berth</title>
<link rel="stylesheet" href="/ui/static/console.css"><script src="/ui/static/console.js" defer></script></head>
<body data-live="events" data-app=""><header><span id="live" class="live">connecting…</span></header>
<main id="content"><h1>Events</h1><table class="events"><thead><tr><th>At</th><th>App</th><th>Instance</th><th>Kind</th><th>Actor</th><th>Message</th></tr></thead><tbody></tbody></table></main></body></html>`)
	}))
	mux.HandleFunc("GET /favicon.ico", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) })
	srv := httptest.NewServer(mux)
	b.Cleanup(srv.Close)

	br := testrig.NewBrowser(b)
	bctx, cancel := context.WithTimeout(br.Ctx, 10*time.Minute)
	defer cancel()
	run := func(what string, actions ...chromedp.Action[chromedp.Void]) {
		b.Helper()
		if err := chromedp.Do(bctx, actions...); err != nil {
			b.Fatalf("%s: %v", what, err)
		}
	}
	if _, err := chromedp.Call(bctx, page.AddScriptToEvaluateOnNewDocument, page.AddScriptToEvaluateOnNewDocumentParams{Source: benchProbe}); err != nil {
		b.Fatal(err)
	}
	run("sign in", chromedp.Navigate(srv.URL+"/ui/login"), chromedp.SendKeys(chromedp.ID("token"), admin))
	if _, err := chromedp.RunResponse(bctx, chromedp.Click(chromedp.CSS("form.login button[type=submit]"))); err != nil {
		b.Fatalf("sign in: %v", err)
	}

	// The overview's HTML, as the browser got it, for the floor.
	raw, err := chromedp.Run(bctx, chromedp.Evaluate[string](`fetch("/ui/", {credentials: "same-origin"}).then(r => r.text())`, chromedp.EvalAwaitPromise))
	if err != nil {
		b.Fatal(err)
	}
	overviewHTML = []byte(raw)

	load := func(path string) loadTiming {
		b.Helper()
		run("load "+path, chromedp.Navigate(srv.URL+path))
		t, err := chromedp.Run(bctx, chromedp.Poll[loadTiming](`window.__bench.painted !== undefined && (function () {
  const n = performance.getEntriesByType("navigation")[0];
  return { response: n.responseEnd, dcl: window.__bench.dcl, painted: window.__bench.painted,
    bytes: n.decodedBodySize, rows: document.querySelectorAll("table.apps tbody tr").length };
})()`, chromedp.WithPollingTimeout(time.Minute)))
		if err != nil {
			b.Fatalf("timing of %s: %v", path, err)
		}
		return t
	}
	const loads = 5
	var overview, floor []loadTiming
	b.ResetTimer()
	for range loads {
		overview = append(overview, load("/ui/"))
		floor = append(floor, load("/ui/bench/floor"))
	}
	b.StopTimer()
	o, f := medianLoad(overview), medianLoad(floor)
	if o.Rows != apps || f.Rows != apps {
		b.Fatalf("the overview shows %d rows, the floor %d: want %d", o.Rows, f.Rows, apps)
	}
	report("overview of %d apps, median of %d loads: HTML %d KB, response %.0f ms, DOMContentLoaded %.0f ms, DCL → painted %.0f ms, total (start → painted) %.0f ms",
		apps, loads, o.Bytes>>10, o.Response, o.DCL, o.render(), o.Painted)
	report("floor (the same HTML, static, same server):  HTML %d KB, response %.0f ms, DOMContentLoaded %.0f ms, DCL → painted %.0f ms, total %.0f ms",
		f.Bytes>>10, f.Response, f.DCL, f.render(), f.Painted)
	report("ratios overview / floor: response %.1f×, DCL → painted %.1f×, total %.1f×", o.Response/f.Response, o.render()/f.render(), o.Painted/f.Painted)
	b.ReportMetric(float64(o.Bytes)/1024, "html-KB")
	b.ReportMetric(o.render(), "render-ms")
	b.ReportMetric(o.Painted, "total-ms")
	b.ReportMetric(f.Painted, "floor-total-ms")
	if o.Bytes >= 500<<10 {
		b.Errorf("the overview's HTML is %d KB: the budget is 500 KB", o.Bytes>>10)
	}
	if o.Painted >= 1000 {
		b.Errorf("the overview took %.0f ms to paint: the budget is 1 s", o.Painted)
	}

	// Responsiveness while 100 events a second arrive, for 10 s: on the
	// overview (each burst refetches the page, at most once a second), on
	// the events page (each event a row), and the floor idle.
	const rate, span = 100, 10 * time.Second
	measure := func(path string, events bool) responsiveness {
		b.Helper()
		run("load "+path, chromedp.Navigate(srv.URL+path))
		if _, err := chromedp.Run(bctx, chromedp.Poll[bool](`document.getElementById("live") === null || document.getElementById("live").dataset.state === "live"`,
			chromedp.WithPollingTimeout(time.Minute))); err != nil {
			b.Fatalf("%s: the live stream: %v", path, err)
		}
		run("reset the probe", chromedp.Evaluate[chromedp.Void](`Object.assign(window.__bench, { longest: 0, longTasks: 0, late: 0, ticks: 0, refreshes: 0, events: 0 })`))
		if n := live.Clients(); n != 1 {
			b.Errorf("%s: %d browsers follow the live stream: want 1 (a page left must not keep its stream)", path, n)
		}
		stop := time.Now().Add(span)
		tick := time.NewTicker(time.Second / rate)
		id := 0
		for now := range tick.C {
			if now.After(stop) {
				break
			}
			if !events {
				continue
			}
			id++
			a := fmt.Sprintf("app-%04d", id%apps)
			live.Publish(&msg.Event{ID: strconv.Itoa(id), App: a, Instance: fmt.Sprintf("i%07d", id), Kind: msg.EventInstanceStarted,
				Message: "started <b>instance</b> " + strconv.Itoa(id), Actor: "scheduler", At: now.UTC()})
		}
		tick.Stop()
		r, err := chromedp.Run(bctx, chromedp.Evaluate[responsiveness](`Object.assign({}, window.__bench, { rows: document.querySelectorAll("table tbody tr").length,
  fetches: performance.getEntriesByType("resource").filter(e => e.initiatorType === "fetch").map(e => Math.round(e.duration)) })`))
		if err != nil {
			b.Fatal(err)
		}
		return r
	}
	idle := measure("/ui/bench/floor", false)
	ov := measure("/ui/", true)
	ev := measure("/ui/bench/events", true)
	for _, m := range []struct {
		name string
		r    responsiveness
	}{{"floor, idle", idle}, {"overview, 100 events/s", ov}, {"events page, 100 events/s", ev}} {
		report("%-27s longest main-thread task %4.0f ms, %3d long tasks (> 50 ms), a 50 ms interval at most %4.0f ms late (%d ticks), %d events received, %d refreshes, %d rows",
			m.name+":", m.r.Longest, m.r.LongTasks, m.r.Late, m.r.Ticks, m.r.Events, m.r.Refreshes, m.r.Rows)
		if len(m.r.Fetches) > 0 {
			report("%27s each refetch of the page took %v ms", "", m.r.Fetches)
		}
	}
	b.ReportMetric(ov.Longest, "overview-longest-task-ms")
	b.ReportMetric(ev.Longest, "events-longest-task-ms")
	if ev.Rows != 500 {
		b.Errorf("the events page shows %d rows after %d events: it keeps the newest 500", ev.Rows, int(span.Seconds())*rate)
	}
	if problems := br.Problems(); len(problems) > 0 {
		b.Errorf("the browser saw: %s", strings.Join(problems, "; "))
	}
}

// medianLoad is the load of median total time.
func medianLoad(ls []loadTiming) loadTiming {
	s := slices.Clone(ls)
	slices.SortFunc(s, func(a, b loadTiming) int {
		switch {
		case a.Painted < b.Painted:
			return -1
		case a.Painted > b.Painted:
			return 1
		}
		return 0
	})
	return s[len(s)/2]
}

// seedApps records n apps of 3 replicas and their 3 running, healthy
// instances each, through the store as a leader writes them.
func seedApps(b *testing.B, st *store.Store, n int) {
	b.Helper()
	ctx := context.Background()
	for i := range n {
		a, err := spec.Load(fmt.Appendf(nil, "name: app-%04d\nimage: registry.example.com/team/app-%04d:v1\nport: 8080\nreplicas: 3\n", i, i))
		if err != nil {
			b.Fatal(err)
		}
		if _, _, err := st.Apply(ctx, a, nil); err != nil {
			b.Fatal(err)
		}
	}
	l, _, err := st.Acquire(ctx, "scheduler", "bench", time.Minute)
	if err != nil {
		b.Fatal(err)
	}
	started := time.Now().UTC()
	if err := st.LeaderTx(ctx, l, func(ctx context.Context, tx *store.Tx) error {
		for i := range n {
			for r := range 3 {
				in := store.Instance{ID: fmt.Sprintf("i%04d%02d", i, r), App: fmt.Sprintf("app-%04d", i), Generation: 1,
					ContainerID: fmt.Sprintf("%064x", i*3+r), Address: fmt.Sprintf("10.0.%d.%d:8080", (i*3+r)/250, (i*3+r)%250+1),
					State: msg.StateRunning, Health: "healthy", StartedAt: &started}
				if err := tx.PutInstance(ctx, in); err != nil {
					return err
				}
			}
		}
		return nil
	}); err != nil {
		b.Fatal(err)
	}
}

// report prints a line of the benchmark's results: go test cuts a
// benchmark's log short.
func report(format string, args ...any) { fmt.Printf(format+"\n", args...) }
