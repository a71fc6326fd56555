package console

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/api"
	"github.com/berthhq/berth/scheduler/internal/autoscale"
)

// The app page (GET /ui/apps/{name}) and a generation's page (GET
// /ui/apps/{name}/history/{generation}) show what the API tells the
// signed-in token about one app: its status, its instances by host with
// their checks, its history, routing, certificate, scaling decisions and
// events. Each section is read through its own API route, so a section
// the token may not read, or that fails, says so and the rest still
// shows.

// Bounds of the app page.
const (
	// appMaxDetailed is how many instances the page reads one by one
	// (GET /v1/apps/{name}/instances/{id}) for their check results; past
	// it, instances show their record alone and the page says so.
	appMaxDetailed = 50
	// appCheckResults is how many of an instance's latest check results
	// show.
	appCheckResults = 5
	// appEvents is how many of the app's newest events show.
	appEvents = 50
	// appDecisions is how many of an autoscaled app's newest decisions
	// show.
	appDecisions = 10
)

// appLocalHost names the instances of no registered host: those of the
// scheduler's own engine.
const appLocalHost = "(local engine)"

type appPage struct {
	Base
	Name string
	// Found: the app's status was read; the sections below need it.
	Found bool
	App   api.AppView
	// Ready are the desired spec's instances running and healthy.
	Ready int
	Spec  *spec.App
	// ErrorPct is the share of 5xx answers in percent.
	ErrorPct float64

	Hosts          []appHost
	InstancesError string
	// Undetailed are the instances past appMaxDetailed, shown without
	// their check results.
	Undetailed int

	History      []api.RevisionView
	HistoryError string

	Certificate *appCertificate

	Decisions      []appDecision
	DecisionsError string

	Events      []appEvent
	EventsError string
}

// appHost is one host's instances of the app.
type appHost struct {
	Name      string
	Instances []appInstance
}

// appInstance is one instance: its record and, when read, its check
// results and latest failure.
type appInstance struct {
	api.InstanceView
	Age string
	// Old: it runs another spec than the app's desired one (the API's
	// desired: by spec hash, so an instance of an earlier generation
	// with the same spec, as after a rollback, is not old).
	Old bool
	// Detailed: its check was read (GET of the instance).
	Detailed  bool
	Check     *api.CheckView
	CheckNote string
	// Results are its newest check results, newest first.
	Results []msg.HealthResult
	Failure *api.FailureView
	Error   string
}

// appDecision is one autoscaling decision.
type appDecision struct {
	At      time.Time
	Changed bool
	// Text is the decision on one line, as its event words it.
	Text    string
	Reasons []autoscale.Reason
	Limits  []string
}

// appEvent is one event, its log tail as one text.
type appEvent struct {
	api.EventView
	Tail string
}

// appCertificate is what the page shows of an app's certificate.
type appCertificate struct {
	Hosts []string
	// Source is how the spec asks for it: acme, self_signed or files.
	Source           string
	Certificate, Key string
	RedirectHTTP     bool
	// State is an ACME certificate's, from GET /v1/certificates (nil when
	// not listed); StateError why it could not be read.
	State      *CertRow
	StateError string
}

// app serves the app page.
func (c *console) app(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	page := appPage{Base: base(r, "overview")}
	if spec.CheckName(name) != nil {
		page.Error = appBadName(name)
		c.render(w, http.StatusBadRequest, "app.html", page)
		return
	}
	page.Name, page.Live, page.LiveApp = name, "refresh", name
	if err := c.call(r, http.MethodGet, "/v1/apps/"+name, nil, &page.App); err != nil {
		page.Error = appReadError("the app", err)
		c.render(w, appStatus(err), "app.html", page)
		return
	}
	page.Found, page.Spec = true, page.App.Spec
	for _, s := range page.App.Serving {
		if s.Desired {
			page.Ready += s.Instances
		}
	}
	if t := page.App.Traffic; t != nil {
		page.ErrorPct = t.ErrorRate * 100
	}
	c.appInstances(r, &page)
	if err := c.call(r, http.MethodGet, "/v1/apps/"+name+"/history", nil, &page.History); err != nil {
		page.HistoryError = appReadError("the history", err)
	}
	if page.Spec != nil {
		page.Certificate = c.appCertificateOf(r, page.Spec)
		if page.Spec.Scaling != nil {
			c.appDecisions(r, &page)
		}
	}
	c.appEvents(r, &page)
	c.render(w, http.StatusOK, "app.html", page)
}

// appInstances reads the app's instances, the first appMaxDetailed one
// by one for their checks, and groups them by host (by name, the local
// engine last).
func (c *console) appInstances(r *http.Request, page *appPage) {
	var list []api.InstanceView
	if err := c.call(r, http.MethodGet, "/v1/apps/"+page.Name+"/instances", nil, &list); err != nil {
		page.InstancesError = appReadError("the instances", err)
		return
	}
	failures := map[string]*api.FailureView{}
	for i := range page.App.Failures {
		f := &page.App.Failures[i]
		if _, ok := failures[f.Instance]; !ok && f.Instance != "" {
			failures[f.Instance] = f
		}
	}
	now := c.o.Now()
	hosts := map[string]*appHost{}
	for n, iv := range list {
		in := appInstance{InstanceView: iv, Age: appAge(now, iv.CreatedAt), Old: !iv.Desired, Failure: failures[iv.ID]}
		if n < appMaxDetailed {
			var d api.InstanceDetail
			if err := c.call(r, http.MethodGet, "/v1/apps/"+page.Name+"/instances/"+url.PathEscape(iv.ID), nil, &d); err != nil {
				in.Error = appReadError("its checks", err)
			} else {
				in.InstanceView, in.Detailed, in.Check, in.CheckNote = d.InstanceView, true, d.Check, d.CheckNote
				if d.Check != nil {
					in.Results = d.Check.History[:min(len(d.Check.History), appCheckResults)]
				}
			}
		} else {
			page.Undetailed++
		}
		host := cmp.Or(in.Host, appLocalHost)
		if hosts[host] == nil {
			hosts[host] = &appHost{Name: host}
		}
		hosts[host].Instances = append(hosts[host].Instances, in)
	}
	for _, h := range hosts {
		page.Hosts = append(page.Hosts, *h)
	}
	slices.SortFunc(page.Hosts, func(a, b appHost) int {
		if (a.Name == appLocalHost) != (b.Name == appLocalHost) {
			if a.Name == appLocalHost {
				return 1
			}
			return -1
		}
		return strings.Compare(a.Name, b.Name)
	})
}

// appDecisions reads an autoscaled app's newest decisions, newest first.
func (c *console) appDecisions(r *http.Request, page *appPage) {
	var m api.MetricsView
	if err := c.call(r, http.MethodGet, "/v1/apps/"+page.Name+"/metrics?decisions="+strconv.Itoa(appDecisions), nil, &m); err != nil {
		page.DecisionsError = appReadError("the scaling decisions", err)
		return
	}
	for _, d := range slices.Backward(m.Decisions) {
		ad := appDecision{At: d.At, Changed: d.Current != d.Desired, Limits: d.Limits}
		if err := json.Unmarshal(d.Reasons, &ad.Reasons); err != nil {
			ad.Reasons = nil
		}
		ad.Text = autoscale.Decision{Current: d.Current, Desired: d.Desired, Recommendation: d.Recommendation, Reasons: ad.Reasons, Limits: d.Limits}.String()
		page.Decisions = append(page.Decisions, ad)
	}
}

// appEvents reads the app's newest events, newest first.
func (c *console) appEvents(r *http.Request, page *appPage) {
	var evs []api.EventView
	if err := c.call(r, http.MethodGet, "/v1/events?app="+page.Name+"&last="+strconv.Itoa(appEvents), nil, &evs); err != nil {
		page.EventsError = appReadError("the events", err)
		return
	}
	for _, ev := range slices.Backward(evs) {
		page.Events = append(page.Events, appEvent{EventView: ev, Tail: strings.Join(ev.LogTail, "\n")})
	}
}

// appCertificateOf is what the page shows of the app's certificate: what
// its spec asks for (routing.tls) and, for an ACME certificate, its state
// (status, issuer, expiry, last renewal, failures) as GET
// /v1/certificates lists it; nil when it serves plain HTTP.
func (c *console) appCertificateOf(r *http.Request, a *spec.App) *appCertificate {
	t := a.Routing.TLS
	if t == nil {
		return nil
	}
	out := &appCertificate{Hosts: a.Routing.Hosts, RedirectHTTP: t.RedirectHTTP, Certificate: t.Certificate, Key: t.Key}
	switch {
	case t.ACME:
		out.Source = "acme"
	case t.SelfSigned:
		out.Source = "self_signed"
	default:
		out.Source = "files"
	}
	if !t.ACME {
		return out
	}
	var vs []api.CertificateView
	if err := c.call(r, http.MethodGet, "/v1/certificates", nil, &vs); err != nil {
		out.StateError = appReadError("the certificate", err)
		return out
	}
	for _, v := range vs {
		if v.App == a.Name {
			row := certRow(v, c.o.Now())
			out.State = &row
			break
		}
	}
	return out
}

type generationPage struct {
	Base
	Name       string
	Generation int64
	Found      bool
	Gen        api.GenerationView
}

// generation serves one kept generation of an app: its spec and its diff
// against the kept one before it.
func (c *console) generation(w http.ResponseWriter, r *http.Request) {
	name, v := r.PathValue("name"), r.PathValue("generation")
	page := generationPage{Base: base(r, "overview")}
	if spec.CheckName(name) != nil {
		page.Error = appBadName(name)
		c.render(w, http.StatusBadRequest, "generation.html", page)
		return
	}
	page.Name = name
	gen, err := strconv.ParseInt(v, 10, 64)
	if err != nil || gen < 1 {
		page.Error = fmt.Sprintf("generation: %q must be a generation of the app (a whole number from 1)", msg.Truncate(v, 32))
		c.render(w, http.StatusBadRequest, "generation.html", page)
		return
	}
	page.Generation = gen
	if err := c.call(r, http.MethodGet, "/v1/apps/"+name+"/history/"+strconv.FormatInt(gen, 10), nil, &page.Gen); err != nil {
		page.Error = appReadError(fmt.Sprintf("generation %d", gen), err)
		c.render(w, appStatus(err), "generation.html", page)
		return
	}
	page.Found = true
	c.render(w, http.StatusOK, "generation.html", page)
}

// appBadName is the error of a URL that names no possible app; the name
// is cut, as a URL may be long.
func appBadName(name string) string {
	return fmt.Sprintf("app: %q is not an app name (a DNS label: lowercase letters, digits and '-', at most %d characters)",
		msg.Truncate(name, spec.MaxNameLen+1), spec.MaxNameLen)
}

// appReadError is what a section says when the API did not answer it:
// the API's own words (a refusal names the scope needed, see APIError).
func appReadError(what string, err error) string {
	return "cannot read " + what + ": " + err.Error()
}

// appStatus is the page's status when its main read failed: the API's.
func appStatus(err error) int {
	var ae *APIError
	if errors.As(err, &ae) && ae.Status >= 400 {
		return ae.Status
	}
	return http.StatusInternalServerError
}

// appAge is how long ago t was, to the second (to the minute past an
// hour).
func appAge(now, t time.Time) string {
	if t.IsZero() {
		return ""
	}
	d := max(now.Sub(t), 0)
	if d >= time.Hour {
		return d.Round(time.Minute).String()
	}
	return d.Round(time.Second).String()
}
