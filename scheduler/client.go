package main

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/api"
	"github.com/berthhq/berth/scheduler/internal/autoscale"
	"go.uber.org/zap"
)

// client talks to a scheduler's API.
type client struct {
	base  string
	token string
	http  *http.Client
}

func newClient(f clientFlags) (*client, error) {
	u, err := url.Parse(f.Server)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("--server %q: must be an http:// or https:// URL (https://scheduler.example.com:7070)", msg.Truncate(f.Server, 200))
	}
	token := os.Getenv("BERTH_TOKEN")
	if f.TokenFile != "" {
		t, err := readToken("--token-file", f.TokenFile)
		if err != nil {
			return nil, err
		}
		token = t
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	if f.ServerCA != "" {
		if u.Scheme != "https" {
			return nil, fmt.Errorf("--server-ca is for an https:// --server, and --server is %s", u.Redacted())
		}
		pool, err := caPool(f.ServerCA)
		if err != nil {
			return nil, err
		}
		transport.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &client{base: strings.TrimRight(f.Server, "/"), token: token, http: &http.Client{Timeout: 30 * time.Second, Transport: transport}}, nil
}

// caPool is the system's certificate pool and the PEM certificates in file.
func caPool(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("--server-ca: %w", err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("--server-ca: %s holds no PEM certificate", file)
	}
	return pool, nil
}

// apiError is an error answer of the API.
type apiError struct {
	status int
	body   api.Error
}

func (e *apiError) Error() string {
	if len(e.body.Fields) == 0 {
		return e.body.Error
	}
	var b strings.Builder
	b.WriteString(e.body.Error)
	b.WriteString(":")
	for _, f := range e.body.Fields {
		b.WriteString("\n  ")
		b.WriteString(f.Error())
	}
	return b.String()
}

func (c *client) do(ctx context.Context, method, path string, body []byte, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach the scheduler at %s: %w", c.base, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if resp.StatusCode >= 300 {
		e := &apiError{status: resp.StatusCode}
		if json.Unmarshal(raw, &e.body) != nil || e.body.Error == "" {
			e.body.Error = fmt.Sprintf("%s %s: %s", method, path, resp.Status)
		}
		return e
	}
	if out != nil {
		return json.Unmarshal(raw, out)
	}
	return nil
}

// stream opens a GET of path that lasts as long as it lasts (ctx ends
// it): a log or a wait stream. An error answer is an *apiError.
func (c *client) stream(ctx context.Context, path string) (io.ReadCloser, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", c.base+path, nil)
	if err != nil {
		return nil, err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	stream := *c.http
	stream.Timeout = 0
	resp, err := stream.Do(req)
	if err != nil {
		return nil, fmt.Errorf("cannot reach the scheduler at %s: %w", c.base, err)
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		e := &apiError{status: resp.StatusCode}
		if json.Unmarshal(raw, &e.body) != nil || e.body.Error == "" {
			e.body.Error = fmt.Sprintf("GET %s: %s", path, resp.Status)
		}
		return nil, e
	}
	return resp.Body, nil
}

func runClient(ctx context.Context, c *cli, command string, stdout, stderr *os.File) int {
	err := dispatch(ctx, c, command, stdout, stderr)
	var ae *apiError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ae) && ae.status == http.StatusBadRequest:
		fmt.Fprintf(stderr, "scheduler: %v\n", err)
		return exitUsage
	default:
		fmt.Fprintf(stderr, "scheduler: %v\n", err)
		return exitFailed
	}
}

func dispatch(ctx context.Context, c *cli, command string, out, errOut io.Writer) error {
	switch {
	case strings.HasPrefix(command, "tokens "):
		return tokensDispatch(ctx, &c.Tokens, command, out, errOut)
	case strings.HasPrefix(command, "history"):
		return history(ctx, &c.History, out)
	case command == "apply":
		return apply(ctx, &c.Apply, out, errOut)
	case strings.HasPrefix(command, "scale"):
		cl, err := newClient(c.Scale.clientFlags)
		if err != nil {
			return err
		}
		body, _ := json.Marshal(api.ScaleRequest{Replicas: &c.Scale.Replicas})
		var v api.AppView
		if err := cl.do(ctx, "POST", "/v1/apps/"+c.Scale.App+"/scale", body, &v); err != nil {
			return err
		}
		return show(out, c.Scale.Output, v, func(w io.Writer) {
			fmt.Fprintf(w, "%s: %d replicas, generation %d\n", v.Name, v.DesiredReplicas, v.Generation)
		})
	case strings.HasPrefix(command, "status"):
		return status(ctx, &c.Status, out)
	case command == "edge":
		return edge(ctx, &c.Edge, out)
	case command == "certs":
		return certificates(ctx, &c.Certs, out)
	case strings.HasPrefix(command, "hosts "):
		return hostsDispatch(ctx, c, command, out)
	case strings.HasPrefix(command, "events"):
		return events(ctx, &c.Events, out)
	case strings.HasPrefix(command, "logs"):
		return appLogs(ctx, &c.Logs, out)
	case strings.HasPrefix(command, "rm"):
		cl, err := newClient(c.Rm.clientFlags)
		if err != nil {
			return err
		}
		if err := cl.do(ctx, "DELETE", "/v1/apps/"+c.Rm.App, nil, nil); err != nil {
			return err
		}
		fmt.Fprintf(out, "%s: deleted; its instances are being stopped\n", c.Rm.App)
		return nil
	case strings.HasPrefix(command, "redeploy"):
		return redeploy(ctx, &c.Redeploy, out)
	case strings.HasPrefix(command, "restart"):
		if err := c.Restart.waitFlags.check(); err != nil {
			return &apiError{status: http.StatusBadRequest, body: api.Error{Error: err.Error()}}
		}
		cl, err := newClient(c.Restart.clientFlags)
		if err != nil {
			return err
		}
		var v api.AppView
		if err := cl.do(ctx, "POST", "/v1/apps/"+c.Restart.App+"/restart", nil, &v); err != nil {
			return err
		}
		if err := show(out, c.Restart.Output, v, func(w io.Writer) {
			fmt.Fprintf(w, "%s: restarting, generation %d: every instance is replaced by a rolling update\n", v.Name, v.Generation)
		}); err != nil || !c.Restart.Wait {
			return err
		}
		return waitRollout(ctx, cl, v.Name, v.Generation, c.Restart.Timeout, reconnectEvery, out)
	case strings.HasPrefix(command, "rollback"):
		if err := c.Rollback.waitFlags.check(); err != nil {
			return &apiError{status: http.StatusBadRequest, body: api.Error{Error: err.Error()}}
		}
		cl, err := newClient(c.Rollback.clientFlags)
		if err != nil {
			return err
		}
		var body []byte
		what := "the previous spec"
		if c.Rollback.To != 0 {
			body, _ = json.Marshal(api.RollbackRequest{To: &c.Rollback.To})
			what = fmt.Sprintf("generation %d's spec", c.Rollback.To)
		}
		var v api.AppView
		if err := cl.do(ctx, "POST", "/v1/apps/"+c.Rollback.App+"/rollback", body, &v); err != nil {
			return err
		}
		if err := show(out, c.Rollback.Output, v, func(w io.Writer) {
			fmt.Fprintf(w, "%s: rolled back to %s, now generation %d (image %s)\n", v.Name, what, v.Generation, v.Spec.Image)
		}); err != nil || !c.Rollback.Wait {
			return err
		}
		return waitRollout(ctx, cl, v.Name, v.Generation, c.Rollback.Timeout, reconnectEvery, out)
	}
	return fmt.Errorf("unknown command %q", command)
}

func show(out io.Writer, format string, v any, table func(io.Writer)) error {
	if format == "json" {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	table(out)
	return nil
}

// apply sends a spec and says which top-level fields changed; with
// --dry-run it asks for the plan instead, and changes nothing.
func apply(ctx context.Context, a *applyCmd, out, errOut io.Writer) error {
	if err := a.waitFlags.check(); err != nil {
		return &apiError{status: http.StatusBadRequest, body: api.Error{Error: err.Error()}}
	}
	if a.DryRun && a.Wait {
		return &apiError{status: http.StatusBadRequest, body: api.Error{Error: "--dry-run and --wait: a dry run starts no rollout to wait for; give one of them"}}
	}
	var src []byte
	var err error
	if a.File == "-" {
		src, err = io.ReadAll(io.LimitReader(os.Stdin, spec.MaxSpecSize+1))
	} else {
		src, err = os.ReadFile(a.File)
	}
	if err != nil {
		return err
	}
	// Check locally first: the same errors as the server's, without a round trip.
	app, err := spec.Load(src)
	if err != nil {
		return &apiError{status: http.StatusBadRequest, body: api.Error{Error: "invalid spec in " + a.File, Fields: fieldErrors(err)}}
	}
	cl, err := newClient(a.clientFlags)
	if err != nil {
		return err
	}
	if a.DryRun {
		var p api.PlanView
		if err := cl.do(ctx, "POST", "/v1/apps/"+url.PathEscape(app.Name)+"/plan", src, &p); err != nil {
			return err
		}
		return show(out, a.Output, p, func(w io.Writer) { printPlan(w, a.File, p) })
	}
	var before api.AppView
	var ae *apiError
	if err := cl.do(ctx, "GET", "/v1/apps/"+app.Name, nil, &before); err != nil && !(errors.As(err, &ae) && ae.status == http.StatusNotFound) {
		return err
	}
	// The file as it is: a secret's plaintext never marshals (spec.EnvValue).
	var v api.AppView
	if err := cl.do(ctx, "PUT", "/v1/apps/"+app.Name, src, &v); err != nil {
		return err
	}
	changed := changedFields(before.Spec, app)
	// A new pin of the same image (the note below names a new image's).
	if before.Spec != nil && v.ImageRef != before.ImageRef && before.Spec.Image == app.Image {
		changed = append(changed, fmt.Sprintf("image pinned to %s (was %s)", v.ImageRef, cmp.Or(before.ImageRef, "not pinned")))
	}
	if len(changed) == 0 {
		// Both sides show secrets redacted: only the server knows that one
		// changed.
		changed = []string{"env (a secret value)"}
	}
	if err := show(out, a.Output, v, func(w io.Writer) {
		switch {
		case before.Spec == nil:
			fmt.Fprintf(w, "%s: created, generation %d\n", v.Name, v.Generation)
		case v.Changed != nil && !*v.Changed:
			fmt.Fprintf(w, "%s: unchanged, generation %d\n", v.Name, v.Generation)
		default:
			fmt.Fprintf(w, "%s: generation %d, changed: %s\n", v.Name, v.Generation, strings.Join(changed, ", "))
		}
		switch {
		case v.ImageRef == "" && v.ImageNote != "":
			// Not pinned: a warning, beside the output a script reads.
			fmt.Fprintf(errOut, "scheduler: warning: %s: %s\n", v.Name, v.ImageNote)
		case v.ImageNote != "":
			fmt.Fprintf(w, "%s: %s\n", v.Name, v.ImageNote)
		}
	}); err != nil || !a.Wait {
		return err
	}
	return waitRollout(ctx, cl, v.Name, v.Generation, a.Timeout, reconnectEvery, out)
}

func fieldErrors(err error) []spec.FieldError {
	var es spec.Errors
	if errors.As(err, &es) {
		return es
	}
	return []spec.FieldError{{Message: err.Error()}}
}

// changedFields lists the top-level spec fields that differ. Secrets read
// spec.RedactedValue on both sides, so a changed secret is not among them.
func changedFields(before, after *spec.App) []string {
	if before == nil {
		return nil
	}
	var b, a map[string]any
	bb, _ := json.Marshal(before)
	ab, _ := json.Marshal(after)
	_ = json.Unmarshal(bb, &b)
	_ = json.Unmarshal(ab, &a)
	var out []string
	for k := range a {
		if !reflect.DeepEqual(a[k], b[k]) {
			out = append(out, k)
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

func status(ctx context.Context, s *statusCmd, out io.Writer) error {
	cl, err := newClient(s.clientFlags)
	if err != nil {
		return err
	}
	if s.App == "" && s.Instance != "" {
		return &apiError{status: http.StatusBadRequest, body: api.Error{Error: "--instance needs the app: scheduler status APP --instance ID"}}
	}
	if s.App == "" {
		var apps []api.AppView
		if err := cl.do(ctx, "GET", "/v1/apps?summary=true", nil, &apps); err != nil {
			return err
		}
		return show(out, s.Output, apps, func(w io.Writer) { printApps(w, apps, time.Now()) })
	}
	if s.Instance != "" {
		return instanceStatus(ctx, cl, s, out)
	}
	var app api.AppView
	if err := cl.do(ctx, "GET", "/v1/apps/"+s.App, nil, &app); err != nil {
		return err
	}
	var insts []api.InstanceView
	if err := cl.do(ctx, "GET", "/v1/apps/"+s.App+"/instances", nil, &insts); err != nil {
		return err
	}
	view := map[string]any{"app": app, "instances": insts}
	var m *api.MetricsView
	if app.Spec != nil && app.Spec.Scaling != nil {
		m = &api.MetricsView{}
		if err := cl.do(ctx, "GET", "/v1/apps/"+s.App+"/metrics?decisions=6", nil, m); err != nil {
			return err
		}
		view["autoscaling"] = m
	}
	return show(out, s.Output, view, func(w io.Writer) {
		fmt.Fprintf(w, "%s: generation %d, %d of %d replicas running%s, image %s, last changed by %s %s ago\n", app.Name, app.Generation, app.ObservedReplicas, app.DesiredReplicas,
			lostNote(app), app.Spec.Image, cmp.Or(app.UpdatedBy, "-"), age(app.UpdatedAt))
		fmt.Fprintln(w, pinLine(app))
		for _, c := range app.Conflicts {
			fmt.Fprintf(w, "not routed: %s\n", c)
		}
		printRollout(w, app)
		fmt.Fprintln(w, trafficLine(app.Traffic))
		for _, l := range ejectedLines(app.Ejected, time.Now()) {
			fmt.Fprintln(w, l)
		}
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		hosts := false
		for _, i := range insts {
			hosts = hosts || i.Host != ""
		}
		if hosts {
			fmt.Fprintln(tw, "INSTANCE\tGENERATION\tSTATE\tHEALTH\tHOST\tADDRESS\tRESTARTS\tAGE")
		} else {
			fmt.Fprintln(tw, "INSTANCE\tGENERATION\tSTATE\tHEALTH\tADDRESS\tRESTARTS\tAGE")
		}
		for _, i := range insts {
			if hosts {
				fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%d\t%s\n", i.ID, i.Generation, i.State, i.Health, cmp.Or(i.Host, "-"), i.Address, i.Restarts, age(i.CreatedAt))
				continue
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%d\t%s\n", i.ID, i.Generation, i.State, i.Health, i.Address, i.Restarts, age(i.CreatedAt))
		}
		tw.Flush()
		if len(app.Failures) > 0 {
			fmt.Fprintln(w, "\nlatest failure of each instance (newest first; scheduler events --app "+app.Name+" has the log tails):")
			for _, f := range app.Failures {
				fmt.Fprintf(w, "  %s  generation %d  %s ago  %s\n", cmp.Or(f.Instance, "-"), f.Generation, age(f.At), f)
			}
		}
		if m != nil {
			printAutoscaling(w, m)
		}
	})
}

// printApps is the table of every app (GET /v1/apps?summary=true): its
// replicas ready of desired, their health, its rollout, its traffic and
// its newest event. A scheduler from before the summary sends none: its
// columns then read "-".
func printApps(w io.Writer, apps []api.AppView, now time.Time) {
	ago := func(t time.Time) string { return now.Sub(t).Round(time.Second).String() + " ago" }
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "APP\tGENERATION\tREADY\tHEALTH\tROLLOUT\tRPS\t5XX\tP95\tLAST EVENT\tSTATUS\tUPDATED\tBY")
	for _, a := range apps {
		ready, health, rollout, last := "-", "-", "-", "-"
		if sm := a.Summary; sm != nil {
			ready, health = fmt.Sprintf("%d/%d", sm.ReadyReplicas, a.DesiredReplicas), sm.Health.String()
			if e := sm.LastEvent; e != nil {
				last = fmt.Sprintf("%s %s", e.Kind, ago(e.At))
			}
		}
		if a.Rollout != nil {
			rollout = a.Rollout.State
		}
		rps, errs, p95 := "-", "-", "-"
		if t := a.Traffic; t != nil {
			rps, errs, p95 = fmt.Sprintf("%.1f", t.RPS), fmt.Sprintf("%.2f%%", 100*t.ErrorRate), fmt.Sprintf("%.1fms", t.P95MS)
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", a.Name, a.Generation, ready, health, rollout, rps, errs, p95, last,
			a.Status, ago(a.UpdatedAt), cmp.Or(a.UpdatedBy, "-"))
	}
	tw.Flush()
}

// printRollout says what is desired against what serves: the desired
// generation's rollout (with the cause of a failure or rollback), the
// instances that serve by generation, and an open breaker.
func printRollout(w io.Writer, app api.AppView) {
	if ro := app.Rollout; ro != nil {
		switch ro.State {
		case api.RolloutRolledBack:
			fmt.Fprintf(w, "rollout: generation %d rolled back generation %d %s ago: %s\n", ro.Generation, ro.FromGeneration, age(ro.At), ro.Cause)
		case api.RolloutFailed:
			fmt.Fprintf(w, "rollout: generation %d FAILED %s ago, stopped (apply a fixed spec, or scheduler rollback): %s\n", ro.Generation, age(ro.At), ro.Cause)
		case api.RolloutReleasing:
			fmt.Fprintf(w, "rollout: generation %d releasing for %s: its release task runs, its instances start once it exits 0\n", ro.Generation, age(ro.At))
		default:
			fmt.Fprintf(w, "rollout: generation %d %s\n", ro.Generation, ro.State)
		}
	}
	if len(app.Serving) == 0 && app.Rollout != nil {
		fmt.Fprintln(w, "serving: no healthy instance")
	}
	for _, sv := range app.Serving {
		what := "an earlier spec"
		if sv.Desired {
			what = "the desired spec"
		}
		fmt.Fprintf(w, "serving: %d instance(s) of generation %d, image %s (%s)\n", sv.Instances, sv.Generation, cmp.Or(sv.Image, "?"), what)
	}
	if b := app.Breaker; b != nil {
		fmt.Fprintf(w, "breaker: open, nothing of generation %d starts until %s (in %s): %s\n", b.Generation, b.Until.Local().Format(time.DateTime),
			time.Until(b.Until).Round(time.Second), b.Reason)
	}
}

// trafficLine is an app's traffic over the lbagents' last windows, in one line.
func trafficLine(t *api.TrafficView) string {
	if t == nil {
		return "traffic: no lbagent reported this app lately"
	}
	nodes := "lbagents"
	if t.Nodes == 1 {
		nodes = "lbagent"
	}
	return fmt.Sprintf("traffic: %.1f req/s, %.2f%% 5xx, p95 %.1f ms (%d %s, last %s window %s ago)",
		t.RPS, 100*t.ErrorRate, t.P95MS, t.Nodes, nodes, time.Duration(t.Window).Round(100*time.Millisecond), age(t.At))
}

// ejectedLines are the instances lbagents ejected for failing real
// traffic (health.outlier), one line each.
func ejectedLines(es []api.EjectionView, now time.Time) []string {
	out := make([]string, 0, len(es))
	for _, e := range es {
		out = append(out, fmt.Sprintf("ejected by lbagent %s: instance %s for %s more (ejection %d): %s",
			e.Node, e.Instance, e.Until.Sub(now).Round(time.Second), e.Times, e.Reason))
	}
	return out
}

// lostNote says how many of an app's instances were lost with their host
// and what becomes of them: "" when none was.
func lostNote(app api.AppView) string {
	if app.LostReplicas == 0 {
		return ""
	}
	if app.Spec != nil && !app.Spec.Placement.ReplaceLost() {
		return fmt.Sprintf(" (%d lost with their host, counted toward replicas + max_surge until it answers: placement.on_host_lost.replace is false)", app.LostReplicas)
	}
	return fmt.Sprintf(" (%d lost with their host and replaced; their containers there are removed once it answers)", app.LostReplicas)
}

// printAutoscaling shows an autoscaled app's last decision (each metric's
// value against its target) and its recent changes.
func printAutoscaling(w io.Writer, m *api.MetricsView) {
	sc := m.Scaling
	fmt.Fprintf(w, "\nautoscaling: %d–%d replicas, window %s, tolerance %.2g, stabilisation up %s / down %s, cooldown up %s / down %s\n",
		sc.Min, sc.Max, sc.Window, sc.Tolerance, sc.ScaleUpStabilization, sc.ScaleDownStabilization, sc.ScaleUpCooldown, sc.ScaleDownCooldown)
	if len(m.Decisions) == 0 {
		fmt.Fprintln(w, "no decision yet (the leader decides every --autoscale-interval)")
		return
	}
	last := m.Decisions[len(m.Decisions)-1]
	fmt.Fprintf(w, "last decision %s ago: %d → %d (metrics recommend %d)\n", age(last.At), last.Current, last.Desired, last.Recommendation)
	var reasons []autoscale.Reason
	_ = json.Unmarshal(last.Reasons, &reasons)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "METRIC\tVALUE\tTARGET\tRATIO\tREPLICAS\tNOTE")
	for _, r := range reasons {
		value := fmt.Sprintf("%.4g", r.Value)
		if r.NoData {
			value = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%.4g\t%.2f\t%d\t%s\n", r.Metric, value, r.Target, r.Ratio, r.Replicas, r.Note)
	}
	tw.Flush()
	for _, l := range last.Limits {
		fmt.Fprintf(w, "held by: %s\n", l)
	}
	for _, d := range m.Decisions {
		if d.Desired != d.Current {
			fmt.Fprintf(w, "scaled %d → %d %s ago\n", d.Current, d.Desired, age(d.At))
		}
	}
}

func age(t time.Time) string { return time.Since(t).Round(time.Second).String() }

func events(ctx context.Context, e *eventsCmd, out io.Writer) error {
	cl, err := newClient(e.clientFlags)
	if err != nil {
		return err
	}
	q := url.Values{"last": {strconv.Itoa(e.Last)}}
	if e.App != "" {
		q.Set("app", e.App)
	}
	path := "/v1/events?" + q.Encode()
	var evs []api.EventView
	if err := cl.do(ctx, "GET", path, nil, &evs); err != nil {
		return err
	}
	for _, ev := range evs {
		printEvent(out, e.Output, ev.At, ev.App, ev.Instance, string(ev.Kind), ev.Actor, ev.Message, ev)
		if e.Output != "json" {
			for _, l := range ev.LogTail {
				fmt.Fprintf(out, "    | %s\n", l)
			}
		}
	}
	if !e.Follow {
		return nil
	}
	names, err := msg.NewNames(e.Prefix)
	if err != nil {
		return err
	}
	flags := bus.Flags{URL: e.NATSURL, NKeyFile: e.NKey, Replicas: 1}
	conn, err := flags.Connect(ctx, "scheduler-events", names, zap.NewNop())
	if err != nil {
		return err
	}
	defer conn.Close()
	subject := names.AllEvents()
	if e.App != "" {
		subject = names.AppEvents(e.App)
	}
	sub, err := conn.Subscribe(subject, bus.Decoded(msg.DecodeAs[*msg.Event], func(_ string, ev *msg.Event) {
		printEvent(out, e.Output, ev.At, ev.App, ev.Instance, string(ev.Kind), ev.Actor, ev.Message, ev)
	}, func(string, error) {}))
	if err != nil {
		return err
	}
	<-ctx.Done()
	return sub.Drain()
}

// printEvent prints one event: when, the app (and instance), its kind,
// who made it happen ("-" for events from before actors were recorded),
// and its message.
func printEvent(out io.Writer, format string, at time.Time, app, instance, kind, actor, message string, v any) {
	if format == "json" {
		b, _ := json.Marshal(v)
		fmt.Fprintln(out, string(b))
		return
	}
	who := app
	if instance != "" {
		who += "/" + instance
	}
	fmt.Fprintf(out, "%s  %-24s %-20s %-12s %s\n", at.Local().Format(time.DateTime), who, kind, cmp.Or(actor, "-"), message)
}
