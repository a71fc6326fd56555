package api

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/berthhq/berth/common/msg"
)

// ModeUnknown is the mode of an lbagent whose record names none: one
// older than the field.
const ModeUnknown = "unknown"

// EdgeView is GET /v1/edge: every lbagent this replica's watch of the
// agents bucket holds, and how far behind the instances bucket each
// one's nginx is.
type EdgeView struct {
	// InstancesRevision is the newest revision of the instances bucket, as
	// NATS told this replica (0: the bucket is empty). RevisionError, when
	// set, says why it could not be read: then no lag is known.
	InstancesRevision uint64 `json:"instances_revision"`
	RevisionError     string `json:"revision_error,omitempty"`
	// Agents are by node.
	Agents []AgentView `json:"agents"`
}

// AgentView is one lbagent: what its nginx serves, how it changes nginx,
// and how its latest changes went.
type AgentView struct {
	Node string `json:"node"`
	// AppliedRevision is the highest instances-bucket revision its nginx
	// is confirmed to serve.
	AppliedRevision uint64 `json:"applied_revision"`
	// Lag is how many instances-bucket revisions its nginx is behind
	// InstancesRevision: 0 is caught up. Absent when unknown (the newest
	// revision was not read, or the bucket started over below it).
	Lag *uint64 `json:"lag,omitempty"`
	// Mode is dynamic, reload, or unknown (an older lbagent).
	Mode string `json:"mode"`
	// LastReload and LastPush are its latest nginx reload (or failed
	// attempt at one) and endpoint push; absent when none yet, or when
	// the lbagent is older than these fields.
	LastReload *msg.ConfigChange `json:"last_reload,omitempty"`
	LastPush   *msg.ConfigChange `json:"last_push,omitempty"`
	// NginxVersion is what nginx -v printed; empty when unknown.
	NginxVersion string `json:"nginx_version,omitempty"`
	// LastError is the error of the change that fails as a whole now.
	LastError string `json:"last_error,omitempty"`
	// Errors maps the apps whose newest config its nginx refused to why.
	Errors map[string]string `json:"errors,omitempty"`
	// Apps counts the apps its nginx serves; Ejected the instances it
	// took out of rotation for failing real traffic.
	Apps    int `json:"apps"`
	Ejected int `json:"ejected,omitempty"`
	// UpdatedAt is when it last reported. Stale: longer ago than the
	// agents bucket's TTL, so it is gone, or cut off from NATS; drains no
	// longer wait for it.
	UpdatedAt time.Time `json:"updated_at"`
	Stale     bool      `json:"stale"`
}

// revisionTimeout bounds the read of the instances bucket's newest
// revision: the edge view answers without the lag rather than hang.
const revisionTimeout = 2 * time.Second

// edge answers GET /v1/edge from this replica's view of the agents
// bucket, the same on a leader as on a follower.
func (a *api) edge(w http.ResponseWriter, r *http.Request) {
	v := EdgeView{Agents: []AgentView{}}
	if a.o.InstancesRevision != nil {
		ctx, cancel := context.WithTimeout(r.Context(), revisionTimeout)
		rev, err := a.o.InstancesRevision(ctx)
		cancel()
		if err != nil {
			a.logger.Warn("edge view without lag: the instances bucket's revision did not read", zap.Error(err))
			v.RevisionError = "the newest revision of the instances bucket did not read from NATS (the scheduler's log says why): lag unknown"
		} else {
			v.InstancesRevision = rev
		}
	} else {
		v.RevisionError = "this scheduler does not read the instances bucket's revision: lag unknown"
	}
	if a.o.Agents != nil {
		v.Agents = edgeAgents(a.o.Agents(), v.InstancesRevision, v.RevisionError == "", time.Now())
	}
	writeJSON(w, http.StatusOK, v)
}

// edgeAgents views records at now, by node, with each one's lag behind
// latest when it is known.
func edgeAgents(records []*msg.Agent, latest uint64, known bool, now time.Time) []AgentView {
	out := make([]AgentView, 0, len(records))
	for _, m := range records {
		if m == nil {
			continue
		}
		v := AgentView{Node: m.Node, AppliedRevision: m.AppliedRevision, Mode: m.Mode, LastReload: m.LastReload, LastPush: m.LastPush,
			NginxVersion: m.NginxVersion, LastError: m.LastError, Errors: m.Errors, Apps: len(m.Apps), Ejected: len(m.Ejected),
			UpdatedAt: m.UpdatedAt.UTC(), Stale: now.Sub(m.UpdatedAt) > msg.AgentTTL}
		if v.Mode == "" {
			v.Mode = ModeUnknown
		}
		if known && m.AppliedRevision <= latest {
			lag := latest - m.AppliedRevision
			v.Lag = &lag
		}
		out = append(out, v)
	}
	slices.SortFunc(out, func(x, y AgentView) int { return strings.Compare(x.Node, y.Node) })
	return out
}
