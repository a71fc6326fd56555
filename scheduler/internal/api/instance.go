package api

import (
	"fmt"
	"net/http"
	"time"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
)

// InstanceDetail is one instance (GET /v1/apps/{name}/instances/{id}):
// its record, and its health checks as healthd last published them.
type InstanceDetail struct {
	InstanceView
	// Check is the instance's health value from the health bucket; absent
	// when the app has no health check or no checker has published one
	// (CheckNote says which).
	Check     *CheckView `json:"check,omitempty"`
	CheckNote string     `json:"check_note,omitempty"`
}

// CheckView is what healthd last published of an instance's probes: its
// status, its latest results (newest first, at most msg.MaxHealthHistory)
// and its failures by kind since HistorySince (when the checker that
// probes it started to: a healthd restart or a shard handover starts them
// afresh).
type CheckView struct {
	Status               string             `json:"status"`
	Failure              string             `json:"failure,omitempty"`
	Message              string             `json:"message,omitempty"`
	LatencyMS            float64            `json:"latency_ms"`
	ConsecutiveSuccesses int                `json:"consecutive_successes"`
	ConsecutiveFailures  int                `json:"consecutive_failures"`
	Checker              string             `json:"checker"`
	Generation           int64              `json:"generation"`
	CheckedAt            time.Time          `json:"checked_at"`
	History              []msg.HealthResult `json:"history"`
	FailureCounts        map[string]int64   `json:"failure_counts"`
	Probes               int64              `json:"probes"`
	HistorySince         time.Time          `json:"history_since,omitzero"`
}

// Notes of InstanceDetail.CheckNote.
const (
	NoteNoCheck    = "the app has no health check"
	NoteNotChecked = "no health published for this instance yet: its checker (healthd; the scheduler leader for docker and exec checks) has not checked it (initial_delay, not running) or is not running"
	NoteOtherGen   = "the health shown was published for generation %d, not the instance's %d"
	// NoteWrongWriter is a health value sealed by the role whose check the
	// app does not run (bus.HealthTrusted): a takeover attempt, not shown.
	NoteWrongWriter = "the health published for this instance was written by %s, which does not check this app (%s does): it is ignored"
)

func (a *api) instance(w http.ResponseWriter, r *http.Request) {
	name, id := r.PathValue("name"), r.PathValue("id")
	if msg.CheckInstanceID(id) != nil {
		var es spec.Errors
		es.Add("id", "%q is not an instance id (1-63 lowercase letters, digits and '-'): scheduler status %s lists them", msg.Truncate(id, 64), msg.Truncate(name, 64))
		a.fail(w, es)
		return
	}
	app, err := a.d.Apps.Get(r.Context(), name)
	if err != nil {
		a.fail(w, err)
		return
	}
	insts, err := a.d.Apps.Instances(r.Context(), name)
	if err != nil {
		a.fail(w, err)
		return
	}
	for _, i := range insts {
		if i.ID != id {
			continue
		}
		out := InstanceDetail{InstanceView: InstanceView{ID: i.ID, Generation: i.Generation, State: i.State, Health: i.Health, Address: i.Address,
			Host: i.Host, ContainerID: i.ContainerID, Restarts: i.Restarts, CreatedAt: i.CreatedAt}}
		var check *spec.Health
		if app.Spec != nil {
			check = app.Spec.Health
		}
		out.Check, out.CheckNote = a.check(name, id, i.Generation, app.Spec == nil || check.IsEnabled(), check)
		writeJSON(w, http.StatusOK, out)
		return
	}
	writeJSON(w, http.StatusNotFound, Error{Error: fmt.Sprintf("app %s has no instance %s: scheduler status %s lists them", name, id, name)})
}

// check is the instance's published health, or why there is none.
func (a *api) check(app, id string, generation int64, checked bool, hc *spec.Health) (*CheckView, string) {
	var h *msg.Health
	ok := false
	if a.o.Health != nil {
		h, ok = a.o.Health(app, id)
	}
	if ok && !bus.HealthTrusted(hc, h.Sealer) {
		return nil, fmt.Sprintf(NoteWrongWriter, h.Sealer, bus.HealthWriter(hc))
	}
	switch {
	case !ok && !checked:
		return nil, NoteNoCheck
	case !ok:
		return nil, NoteNotChecked
	}
	v := &CheckView{Status: h.Status, Failure: h.Failure, Message: h.Message, LatencyMS: h.LatencyMS, ConsecutiveSuccesses: h.ConsecutiveSuccesses,
		ConsecutiveFailures: h.ConsecutiveFailures, Checker: h.Checker, Generation: h.Generation, CheckedAt: h.CheckedAt,
		History: h.History, FailureCounts: h.FailureCounts, Probes: h.Probes, HistorySince: h.HistorySince}
	if v.History == nil {
		v.History = []msg.HealthResult{}
	}
	if v.FailureCounts == nil {
		v.FailureCounts = map[string]int64{}
	}
	note := ""
	if h.Generation != generation {
		note = fmt.Sprintf(NoteOtherGen, h.Generation, generation)
	}
	return v, note
}
