package console

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/api"
)

// Actions: scale, rollback and restart an app, drain and undrain a host.
// Each is a GET that asks for confirmation, saying what will happen, and
// a POST (CSRF-checked by signedIn) that calls the API as the session's
// token and redirects with a one-off flash saying what happened and the
// event it caused. The API is the authority: the console checks the
// inputs only to refuse nonsense before calling, and shows a refusal as
// the API words it (a 403 names the scope needed and the token's).

// eventWait bounds how long an action waits for the event it caused: the
// leader records app_updated after the API answered, usually within
// milliseconds; past this, the flash says it is not recorded yet.
const eventWait = 2 * time.Second

// field is a hidden field of a confirmation form.
type field struct{ Name, Value string }

// confirmPage asks whether to do an action, says what will happen, and
// holds the form that does it.
type confirmPage struct {
	Base
	Title    string
	Question string
	Effects  []string
	// Action is where the Confirm form posts, Fields its hidden values,
	// Cancel where Cancel goes.
	Action string
	Fields []field
	Cancel string
	// Blocked: there is nothing to confirm (a bad name, an app the token
	// cannot see, or the API refused the token).
	Blocked bool
	// Ask: the scale form asks for a count first (AskApp, Current).
	Ask     bool
	AskApp  string
	Current int
	Max     int
}

// appAction is what an app action's request asks: its app, and the
// count of a scale or the generation of a rollback (0: the newest
// earlier one that differs).
type appAction struct {
	verb     string
	app      string
	replicas int
	to       int64
}

// hostAction is a drain or an undrain of host.
type hostAction struct {
	drain bool
	host  string
}

func (h hostAction) verb() string {
	if h.drain {
		return "drain"
	}
	return "undrain"
}

// actions registers the routes of the actions on mux.
func (c *console) actions(mux *http.ServeMux) {
	for _, verb := range []string{"scale", "rollback", "restart"} {
		mux.HandleFunc("GET /ui/apps/{name}/"+verb, c.signedIn(c.confirmAppAction(verb)))
		mux.HandleFunc("POST /ui/apps/{name}/"+verb, c.signedIn(c.doAppAction(verb)))
	}
	for _, drain := range []bool{true, false} {
		verb := hostAction{drain: drain}.verb()
		mux.HandleFunc("GET /ui/hosts/{host}/"+verb, c.signedIn(c.confirmHostAction(drain)))
		mux.HandleFunc("POST /ui/hosts/{host}/"+verb, c.signedIn(c.doHostAction(drain)))
	}
}

// parseAppAction reads an app action from its path and form values
// (the query of the GET, the form of the POST). missing says the scale
// count was not given at all.
func parseAppAction(r *http.Request, verb string, form url.Values) (a appAction, missing bool, problem string) {
	a = appAction{verb: verb, app: r.PathValue("name")}
	if err := spec.CheckName(a.app); err != nil {
		return a, false, "app: " + err.Error()
	}
	switch verb {
	case "scale":
		v := strings.TrimSpace(form.Get("replicas"))
		if v == "" {
			return a, true, ""
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > spec.MaxReplicas {
			return a, false, fmt.Sprintf("replicas: %q must be a whole number from 0 to %d", msg.Truncate(v, 32), spec.MaxReplicas)
		}
		a.replicas = n
	case "rollback":
		if v := strings.TrimSpace(form.Get("to")); v != "" {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 1 {
				return a, false, fmt.Sprintf("to: %q must be a generation of the app (a whole number from 1); leave it out for the newest earlier spec that differs", msg.Truncate(v, 32))
			}
			a.to = n
		}
	}
	return a, false, ""
}

func (c *console) confirmAppAction(verb string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		a, missing, problem := parseAppAction(r, verb, r.URL.Query())
		code := http.StatusOK
		if problem != "" {
			code = http.StatusBadRequest
		}
		c.showAppAction(w, r, code, a, missing || problem != "", problem)
	}
}

// showAppAction renders the confirmation of a, reading the app through
// the API to say what will happen; ask shows the scale's count form
// instead of the Confirm button; problem is the page's error.
func (c *console) showAppAction(w http.ResponseWriter, r *http.Request, code int, a appAction, ask bool, problem string) {
	page := confirmPage{Base: base(r, "overview"), Title: a.verb + " " + a.app, Cancel: "/ui/", Max: spec.MaxReplicas}
	page.Error = problem
	if spec.CheckName(a.app) != nil {
		page.Blocked = true
		c.render(w, code, "confirm.html", page)
		return
	}
	page.Cancel = "/ui/apps/" + a.app
	page.Action = "/ui/apps/" + a.app + "/" + a.verb
	var app api.AppView
	if err := c.call(r, http.MethodGet, "/v1/apps/"+a.app, nil, &app); err != nil {
		status, text := c.apiMessage(err)
		if page.Error == "" {
			page.Error = text
		}
		if code == http.StatusOK {
			code = status
		}
		if status == http.StatusNotFound {
			page.Cancel = "/ui/"
		}
		page.Blocked = true
		c.render(w, code, "confirm.html", page)
		return
	}
	next := app.Generation + 1
	autoscaled := app.Spec != nil && app.Spec.Scaling != nil
	switch a.verb {
	case "scale":
		if ask {
			page.Ask, page.AskApp, page.Current = true, app.Name, app.DesiredReplicas
			page.Question = fmt.Sprintf("Scale %s: it has %d desired replicas. How many should it have?", app.Name, app.DesiredReplicas)
			break
		}
		page.Fields = []field{{"replicas", strconv.Itoa(a.replicas)}}
		page.Question = fmt.Sprintf("Scale %s from %d to %d replicas?", app.Name, app.DesiredReplicas, a.replicas)
		switch d := a.replicas - app.DesiredReplicas; {
		case d > 0:
			page.Effects = append(page.Effects, fmt.Sprintf("%d more instance(s) start, on hosts with room, and join the load balancers once healthy.", d))
		case d < 0:
			page.Effects = append(page.Effects, fmt.Sprintf("%d instance(s) are drained from every load balancer, then stopped.", -d))
		default:
			page.Effects = append(page.Effects, fmt.Sprintf("%s wants %d replicas already: no instance starts or stops.", app.Name, a.replicas))
		}
		if autoscaled {
			page.Effects = append(page.Effects, fmt.Sprintf("%s is autoscaled: the API refuses a fixed count; change scaling.min and scaling.max in its spec instead.", app.Name))
		}
	case "rollback":
		if a.to > 0 {
			page.Fields = []field{{"to", strconv.FormatInt(a.to, 10)}}
			page.Question = fmt.Sprintf("Roll %s back to generation %d?", app.Name, a.to)
			page.Effects = append(page.Effects, fmt.Sprintf("The spec and image of generation %d come back as generation %d.", a.to, next))
		} else {
			page.Question = fmt.Sprintf("Roll %s back?", app.Name)
			page.Effects = append(page.Effects, fmt.Sprintf("The newest earlier spec (or image) that differs from generation %d's comes back as generation %d.", app.Generation, next))
		}
		page.Effects = append(page.Effects, "Its instances are replaced by a rolling update: new ones start and become healthy before old ones stop.")
	case "restart":
		page.Question = fmt.Sprintf("Restart every instance of %s?", app.Name)
		page.Effects = append(page.Effects, fmt.Sprintf("Its %d instance(s) are replaced by a rolling update, with the same spec and image, as generation %d: new ones start and become healthy before old ones stop.", app.DesiredReplicas, next))
	}
	if !ask {
		page.Effects = append(page.Effects, fmt.Sprintf("The change is made as token %s, and its app_updated event is shown once recorded.", viewerOf(r).who.Name))
	}
	page.Blocked = code == http.StatusUnauthorized || code == http.StatusForbidden
	c.render(w, code, "confirm.html", page)
}

func (c *console) doAppAction(verb string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		a, missing, problem := parseAppAction(r, verb, r.PostForm)
		if missing {
			problem = "replicas: give the count, a whole number from 0 to " + strconv.Itoa(spec.MaxReplicas)
		}
		if problem != "" {
			c.logAction(r, verb, zap.String("app", a.app), "refused by the console", problem)
			c.showAppAction(w, r, http.StatusBadRequest, a, verb == "scale", problem)
			return
		}
		var before api.AppView
		if verb == "scale" {
			// The count it had, for the flash; the API decides anyway.
			if err := c.call(r, http.MethodGet, "/v1/apps/"+a.app, nil, &before); err != nil {
				c.refuseApp(w, r, a, err)
				return
			}
		}
		// Joined before the call, so that the event cannot slip past.
		var cl *client
		if c.o.Live != nil {
			cl = c.o.Live.join(a.app)
			defer c.o.Live.leave(cl)
		}
		// Every POST has a JSON body, empty when the route needs none:
		// the API reads the body of some (rollback's is optional).
		var body any = struct{}{}
		switch {
		case verb == "scale":
			body = api.ScaleRequest{Replicas: &a.replicas}
		case verb == "rollback" && a.to > 0:
			body = api.RollbackRequest{To: &a.to}
		}
		var after api.AppView
		if err := c.call(r, http.MethodPost, "/v1/apps/"+a.app+"/"+verb, body, &after); err != nil {
			c.refuseApp(w, r, a, err)
			return
		}
		var done string
		switch verb {
		case "scale":
			done = fmt.Sprintf("Scaled %s from %d to %d replicas: generation %d.", a.app, before.DesiredReplicas, after.DesiredReplicas, after.Generation)
		case "rollback":
			done = fmt.Sprintf("Rolled %s back: generation %d has the spec of an earlier one (image %s).", a.app, after.Generation, imageOf(after))
			if a.to > 0 {
				done = fmt.Sprintf("Rolled %s back to generation %d: it is generation %d now (image %s).", a.app, a.to, after.Generation, imageOf(after))
			}
		case "restart":
			done = fmt.Sprintf("Restarting %s: generation %d replaces every instance.", a.app, after.Generation)
		}
		ev, ok := c.resultEvent(r, cl, a.app, after.Generation)
		if ok {
			done += " " + ev
		} else {
			done += fmt.Sprintf(" Its app_updated event for generation %d is not recorded yet: the leader records it, and the app's events show it.", after.Generation)
		}
		c.logAction(r, verb, zap.String("app", a.app), "done", done)
		c.sess.setFlash(viewerOf(r).id, done)
		http.Redirect(w, r, "/ui/apps/"+a.app, http.StatusSeeOther)
	}
}

// refuseApp shows the confirmation again with the API's refusal, at its
// status.
func (c *console) refuseApp(w http.ResponseWriter, r *http.Request, a appAction, err error) {
	code, text := c.apiMessage(err)
	c.logAction(r, a.verb, zap.String("app", a.app), "refused by the API", text)
	c.showAppAction(w, r, code, a, false, text)
}

func imageOf(a api.AppView) string {
	if a.Spec == nil {
		return "unknown"
	}
	return a.Spec.Image
}

// resultEvent finds the app_updated event of app's generation: among its
// newest events through the API, else as it arrives on cl (joined before
// the action) for up to eventWait. It returns the event said in a
// sentence.
func (c *console) resultEvent(r *http.Request, cl *client, app string, generation int64) (string, bool) {
	gen := strconv.FormatInt(generation, 10)
	say := func(id, actor, message string) string {
		return fmt.Sprintf("Event #%s app_updated by %s: %s", id, actor, message)
	}
	fromAPI := func() (string, bool) {
		var evs []api.EventView
		if err := c.call(r, http.MethodGet, "/v1/events?last=5&app="+app, nil, &evs); err != nil {
			c.logger.Info("cannot read the events of an action", zap.String("app", app), zap.Error(err))
			return "", false
		}
		for i := len(evs) - 1; i >= 0; i-- {
			if e := evs[i]; e.Kind == msg.EventAppUpdated && e.Details["generation"] == gen {
				return say(strconv.FormatInt(e.ID, 10), e.Actor, e.Message), true
			}
		}
		return "", false
	}
	if text, ok := fromAPI(); ok || cl == nil {
		return text, ok
	}
	ctx, cancel := context.WithTimeout(r.Context(), eventWait)
	defer cancel()
	for {
		select {
		case <-ctx.Done():
			return "", false
		case <-cl.lagged:
			if text, ok := fromAPI(); ok {
				return text, true
			}
		case e := <-cl.events:
			if e.App == app && e.Kind == msg.EventAppUpdated && e.Details["generation"] == gen {
				return say(e.ID, e.Actor, e.Message), true
			}
		}
	}
}

func (c *console) confirmHostAction(drain bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		h := hostAction{drain: drain, host: r.PathValue("host")}
		code, problem := http.StatusOK, ""
		if err := spec.CheckName(h.host); err != nil {
			code, problem = http.StatusBadRequest, "host: "+err.Error()
		}
		c.showHostAction(w, r, code, h, problem)
	}
}

// showHostAction renders the confirmation of h, reading the host through
// the API to say what will happen.
func (c *console) showHostAction(w http.ResponseWriter, r *http.Request, code int, h hostAction, problem string) {
	page := confirmPage{Base: base(r, "hosts"), Title: h.verb() + " " + h.host, Cancel: "/ui/hosts"}
	page.Error = problem
	if spec.CheckName(h.host) != nil {
		page.Blocked = true
		c.render(w, code, "confirm.html", page)
		return
	}
	page.Action = "/ui/hosts/" + h.host + "/" + h.verb()
	var hv api.HostView
	if err := c.call(r, http.MethodGet, "/v1/hosts/"+h.host, nil, &hv); err != nil {
		status, text := c.apiMessage(err)
		if page.Error == "" {
			page.Error = text
		}
		if code == http.StatusOK {
			code = status
		}
		page.Blocked = true
		c.render(w, code, "confirm.html", page)
		return
	}
	if h.drain {
		page.Question = fmt.Sprintf("Drain host %s?", hv.Name)
		page.Effects = []string{
			fmt.Sprintf("Nothing new is placed on %s.", hv.Name),
			fmt.Sprintf("Its %d instance(s) move to other hosts under each app's rolling rules: a replacement starts and is healthy before each one here is drained from the load balancers and stopped.", hv.Instances),
		}
		if hv.Drain {
			page.Effects = append(page.Effects, fmt.Sprintf("%s is draining already.", hv.Name))
		}
	} else {
		page.Question = fmt.Sprintf("Undrain host %s?", hv.Name)
		page.Effects = []string{fmt.Sprintf("%s takes new instances again; what moved away stays where it runs.", hv.Name)}
		if !hv.Drain {
			page.Effects = append(page.Effects, fmt.Sprintf("%s is not draining.", hv.Name))
		}
	}
	page.Effects = append(page.Effects, fmt.Sprintf("The change is made as token %s (it needs the admin scope).", viewerOf(r).who.Name))
	page.Blocked = code == http.StatusUnauthorized || code == http.StatusForbidden
	c.render(w, code, "confirm.html", page)
}

func (c *console) doHostAction(drain bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		h := hostAction{drain: drain, host: r.PathValue("host")}
		if err := spec.CheckName(h.host); err != nil {
			problem := "host: " + err.Error()
			c.logAction(r, h.verb(), zap.String("host", h.host), "refused by the console", problem)
			c.showHostAction(w, r, http.StatusBadRequest, h, problem)
			return
		}
		var hv api.HostView
		if err := c.call(r, http.MethodPost, "/v1/hosts/"+h.host+"/"+h.verb(), struct{}{}, &hv); err != nil {
			code, text := c.apiMessage(err)
			c.logAction(r, h.verb(), zap.String("host", h.host), "refused by the API", text)
			c.showHostAction(w, r, code, h, text)
			return
		}
		state := hv.State
		if hv.StateReason != "" {
			state += ": " + hv.StateReason
		}
		done := fmt.Sprintf("Host %s takes new instances again. The API answered: drain %t, state %s, %d instance(s).", hv.Name, hv.Drain, state, hv.Instances)
		if drain {
			done = fmt.Sprintf("Host %s is draining: nothing new is placed there, and its instances move. The API answered: drain %t, state %s, %d instance(s).", hv.Name, hv.Drain, state, hv.Instances)
		}
		c.logAction(r, h.verb(), zap.String("host", h.host), "done", done)
		c.sess.setFlash(viewerOf(r).id, done)
		http.Redirect(w, r, "/ui/hosts", http.StatusSeeOther)
	}
}

// apiMessage is the status and the text to show of a failed API call:
// the API's own words (with each field's message on a 400).
func (c *console) apiMessage(err error) (int, string) {
	var ae *APIError
	if !errors.As(err, &ae) {
		c.logger.Warn("cannot read the API's answer", zap.Error(err))
		return http.StatusInternalServerError, "cannot read the API's answer; see the scheduler's log"
	}
	text := ae.Error()
	if len(ae.Body.Fields) > 0 {
		parts := make([]string, 0, len(ae.Body.Fields))
		for _, f := range ae.Body.Fields {
			parts = append(parts, f.Error())
		}
		text = strings.Join(parts, "; ")
	}
	return ae.Status, text
}

// logAction logs an action: the token, what it asked, of which app or
// host, and how it ended.
func (c *console) logAction(r *http.Request, action string, target zap.Field, result, detail string) {
	log := c.logger.Info
	if result != "done" {
		log = c.logger.Warn
	}
	log("console action", zap.String("token", viewerOf(r).who.Name), zap.String("action", action), target,
		zap.String("result", result), zap.String("detail", msg.Truncate(detail, 512)))
}
