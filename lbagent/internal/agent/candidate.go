package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/lbagent/internal/render"
	"github.com/berthhq/berth/lbagent/internal/state"
)

// candidate is one attempt to build a config nginx accepts: render it,
// test it (nginx -t in a staging prefix), and when nginx refuses it, find
// the apps at fault by bisection and stand in for each its last good
// record, or a placeholder that answers 503.
type candidate struct {
	renderer *render.Renderer
	opts     render.Options
	// staging is the prefix nginx -t runs in, by tester.
	staging string
	tester  Tester
	// lastGood are the last records nginx served of each app: a refused
	// app's stand-in.
	lastGood map[string]state.App
	// rendered observes each full render (Hooks.Rendered); nil: none.
	rendered func(time.Duration)
	now      func() time.Time
	logger   *zap.Logger
	// snap has the apps in known (refused before, by name, with why)
	// already replaced by their stand-ins (Decision.StandIns).
	snap  state.Snapshot
	known map[string]string
}

// built is a config nginx accepted, and the state it serves.
type built struct {
	snap  state.Snapshot
	bytes []byte
	// refused are the apps nginx refused in this build, found by bisection.
	refused map[string]Refusal
	// tested is how long nginx -t took on bytes: about what nginx's
	// master takes to parse them as it reloads (confirmWait).
	tested time.Duration
}

func (c *candidate) render(gen uint64, snap state.Snapshot) ([]byte, error) {
	start := time.Now()
	d, _ := render.Layout(snap, gen, c.opts)
	out, err := c.renderer.Render(d, c.opts.Main)
	if c.rendered != nil {
		c.rendered(time.Since(start))
	}
	return out, err
}

// build renders the snapshot and tests it. When nginx refuses it, it
// finds the apps at fault by bisection, replaces each with its last good
// version (or, for an app never good, a route that answers 503), and
// tests again. It returns the config to apply and the failed apps.
func (c *candidate) build(ctx context.Context, gen uint64) (built, map[string]string, error) {
	failed := map[string]string{}
	for app, why := range c.known {
		failed[app] = why
	}
	start := time.Now()
	d, conflicts := render.Layout(c.snap, gen, c.opts)
	for app, why := range conflicts {
		failed[app] = why
	}
	out, err := c.renderer.Render(d, c.opts.Main)
	if c.rendered != nil {
		c.rendered(time.Since(start))
	}
	var tested time.Duration
	if err == nil {
		tested, err = c.timedTest(ctx, out)
	}
	if err == nil {
		return built{snap: c.snap, bytes: out, tested: tested}, failed, nil
	}
	if ctx.Err() != nil {
		return built{}, failed, ctx.Err()
	}
	c.logger.Warn("candidate config refused, isolating the apps at fault", zap.Error(err))
	bad := c.bisect(ctx, gen, c.snap.Apps, err)
	if len(bad) == 0 {
		return built{}, failed, fmt.Errorf("nginx refused the config but no single app is at fault: %w", err)
	}
	fixed := c.snap
	fixed.Apps = make([]state.App, 0, len(c.snap.Apps))
	refused := map[string]Refusal{}
	routes := routeTable(c.snap.Apps)
	for _, app := range c.snap.Apps {
		why, isBad := bad[app.Spec.Name]
		if !isBad {
			fixed.Apps = append(fixed.Apps, app)
			continue
		}
		failed[app.Spec.Name] = why
		r := Refusal{Generation: app.Spec.Generation, Why: why, At: c.now()}
		stand := state.App{Servers: app.Servers}
		if good, ok := c.lastGood[app.Spec.Name]; ok {
			// The last good record, with today's servers: in dynamic mode
			// they are pushed, in reload mode they are in its upstream.
			stand.Spec = good.Spec
		} else {
			stand, r.Placeholder = placeholder(app, routes), true
		}
		r.Spec = stand.Spec
		refused[app.Spec.Name] = r
		fixed.Apps = append(fixed.Apps, stand)
	}
	d, _ = render.Layout(fixed, gen, c.opts)
	out, err = c.renderer.Render(d, c.opts.Main)
	if err == nil {
		tested, err = c.timedTest(ctx, out)
	}
	if err != nil {
		return built{}, failed, fmt.Errorf("config still refused after isolating %d apps: %w", len(bad), err)
	}
	return built{snap: fixed, bytes: out, refused: refused, tested: tested}, failed, nil
}

// placeholder keeps an app's hosts and paths answering 503, without
// anything that could have made nginx refuse it: no TLS, no health check,
// no host or path the grammar refuses, and of the route table's (routes,
// spec.Claims) only the hosts it routes on and the locations it got on
// every one of them, so a broken app's 503 never takes or shadows another
// app's route.
func placeholder(app state.App, routes *spec.RouteTable) state.App {
	s := *app.Spec
	s.Routing.TLS = nil
	s.Health = nil
	s.Routing.Hosts = nil
	for _, h := range app.Spec.Routing.Hosts {
		if _, routed := routes.Granted(s.Name, spec.HostKey(h)); routed && spec.CheckHost(h) == nil {
			s.Routing.Hosts = append(s.Routing.Hosts, h)
		}
	}
	s.Routing.Paths = nil
	if len(app.Spec.Routing.Hosts) > 0 && len(s.Routing.Hosts) == 0 {
		return state.App{Spec: &s} // no valid host it routes on: no route, never the default server's
	}
	s.Routing.Rules = nil
	granted := func(l spec.Location) bool {
		for _, h := range s.Routing.HostKeys() {
			locs, _ := routes.Granted(s.Name, h)
			if !slices.ContainsFunc(locs, func(g spec.Location) bool { return g.Match == l.Match && g.Path == l.Path && g.Index == l.Index }) {
				return false
			}
		}
		return true
	}
	// Paths and the prefix and exact rules, without their options; no
	// regex, the riskiest thing to hand nginx, and no header match.
	for _, l := range app.Spec.Routing.Locations() {
		switch {
		case l.Match == spec.MatchRegex || (l.Rule != nil && len(l.Rule.Headers) > 0) || !granted(l):
		case l.Rule == nil && spec.CheckPath(l.Path) == nil:
			s.Routing.Paths = append(s.Routing.Paths, l.Path)
		case l.Rule != nil && spec.CheckPath(l.Rule.Path) == nil:
			s.Routing.Rules = append(s.Routing.Rules, spec.Rule{Path: l.Rule.Path, Match: l.Rule.Match})
		}
	}
	return state.App{Spec: &s}
}

// routeTable is the route table of apps (spec.Claims).
func routeTable(apps []state.App) *spec.RouteTable {
	claimants := make([]spec.Claimant, len(apps))
	for i, a := range apps {
		claimants[i] = a.Spec.Claimant()
	}
	return spec.Claims(claimants)
}

// bisect returns the apps that nginx (or a template helper) refuses on their
// own, each with the error, testing halves of apps recursively.
func (c *candidate) bisect(ctx context.Context, gen uint64, apps []state.App, whole error) map[string]string {
	bad := map[string]string{}
	var walk func(apps []state.App, known error)
	walk = func(apps []state.App, known error) {
		if len(apps) == 0 || ctx.Err() != nil {
			return
		}
		err := known
		if err == nil {
			_, err = c.renderAndTest(ctx, gen, apps)
		}
		if err == nil {
			return
		}
		if len(apps) == 1 {
			bad[apps[0].Spec.Name] = err.Error()
			return
		}
		mid := len(apps) / 2
		walk(apps[:mid], nil)
		walk(apps[mid:], nil)
	}
	walk(apps, whole)
	return bad
}

func (c *candidate) renderAndTest(ctx context.Context, gen uint64, apps []state.App) ([]byte, error) {
	out, err := c.render(gen, state.Snapshot{Apps: apps})
	if err != nil {
		return nil, err
	}
	return out, c.test(ctx, out)
}

// timedTest is test, and how long it took.
func (c *candidate) timedTest(ctx context.Context, conf []byte) (time.Duration, error) {
	start := c.now()
	err := c.test(ctx, conf)
	return c.now().Sub(start), err
}

// test writes the candidate into the staging prefix and runs nginx -t on it.
// An include file is wrapped in a minimal main config.
func (c *candidate) test(ctx context.Context, conf []byte) error {
	dir := c.staging
	for _, sub := range []string{"conf", "logs", "run", "temp"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			return err
		}
	}
	main := filepath.Join(dir, "conf", "nginx.conf")
	if c.opts.Main {
		if err := os.WriteFile(main, conf, 0o644); err != nil {
			return err
		}
	} else {
		inc := filepath.Join(dir, "conf", "berth.conf")
		if err := os.WriteFile(inc, conf, 0o644); err != nil {
			return err
		}
		modules := ""
		if d := c.opts.Dynamic; d != nil && d.ModulesDir != "" {
			modules = "load_module " + filepath.Join(d.ModulesDir, "ndk_http_module.so") + ";\nload_module " +
				filepath.Join(d.ModulesDir, "ngx_http_lua_module.so") + ";\n"
		}
		wrapper := modules + "pid run/nginx.pid;\nerror_log logs/error.log;\nevents {}\nhttp {\n" +
			"    client_body_temp_path temp/client_body;\n    proxy_temp_path temp/proxy;\n" +
			"    fastcgi_temp_path temp/fastcgi;\n    uwsgi_temp_path temp/uwsgi;\n    scgi_temp_path temp/scgi;\n" +
			"    include " + inc + ";\n}\n"
		if err := os.WriteFile(main, []byte(wrapper), 0o644); err != nil {
			return err
		}
	}
	return c.tester.Test(ctx, dir, main)
}
