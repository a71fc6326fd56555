package api

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/scheduler/internal/change"
	"github.com/berthhq/berth/scheduler/internal/store"
)

// RevisionView is one generation of an app's spec, and who made it.
type RevisionView struct {
	Generation int64  `json:"generation"`
	Image      string `json:"image"`
	// ImageRef is what the generation's image was pinned to (a digest, or
	// an image ID); absent when it was not pinned.
	ImageRef string    `json:"image_ref,omitempty"`
	Actor    string    `json:"actor,omitempty"`
	At       time.Time `json:"at"`
	// Summary says in one line what changed against the previous kept
	// generation: "image web:1→web:2, replicas 3→5", "env: +DB_URL
	// ~TOKEN (secret)", "restart (same spec)", "back to 7: …"; a secret's
	// value never appears.
	Summary string `json:"summary,omitempty"`
}

// GenerationView is one kept generation of an app (GET
// /v1/apps/{name}/history/{generation}): its spec as YAML, and its diff
// against the kept generation before it. Secrets read spec.RedactedValue,
// never their value nor its sealed form; in the diff, a secret whose value
// changed reads "<redacted> (changed)".
type GenerationView struct {
	RevisionView
	// Previous is the kept generation the diff is against; 0 when none
	// is kept (the first, or the others were pruned).
	Previous int64 `json:"previous,omitempty"`
	// YAML is the spec, as users write it.
	YAML string `json:"yaml"`
	// Diff is the unified diff of Previous's YAML to this one's; "" when
	// they are the same (a restart) or there is no previous.
	Diff string `json:"diff"`
}

// MaxHistory caps ?limit= of GET /v1/apps/{name}/history.
const MaxHistory = 1000

func revisionView(rv store.Revision) RevisionView {
	return RevisionView{Generation: rv.Generation, Image: rv.Image, ImageRef: rv.ImageRef, Actor: rv.Actor, At: rv.At, Summary: rv.Summary}
}

func (a *api) history(w http.ResponseWriter, r *http.Request) {
	limit := 20
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > MaxHistory {
			a.fail(w, spec.Errors{{Path: "limit", Message: fmt.Sprintf("%q must be a whole number from 1 to %d", msg.Truncate(v, 32), MaxHistory)}})
			return
		}
		limit = n
	}
	revs, err := a.d.History.History(r.Context(), r.PathValue("name"), limit)
	if err != nil {
		a.fail(w, err)
		return
	}
	out := make([]RevisionView, 0, len(revs))
	for _, rv := range revs {
		out = append(out, revisionView(rv))
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *api) generation(w http.ResponseWriter, r *http.Request) {
	v := r.PathValue("generation")
	gen, err := strconv.ParseInt(v, 10, 64)
	if err != nil || gen < 1 {
		a.fail(w, spec.Errors{{Path: "generation", Message: fmt.Sprintf("%q must be a generation of the app (a whole number from 1): scheduler history %s lists them",
			msg.Truncate(v, 32), r.PathValue("name"))}})
		return
	}
	cur, prev, err := a.d.History.Generation(r.Context(), r.PathValue("name"), gen)
	if errors.Is(err, store.ErrNoGeneration) {
		writeJSON(w, http.StatusNotFound, Error{Error: err.Error()})
		return
	}
	if err != nil {
		a.fail(w, err)
		return
	}
	out := GenerationView{RevisionView: revisionView(cur), YAML: change.YAML(cur.Spec)}
	if prev != nil {
		out.Previous = prev.Generation
		out.Diff = change.Diff(prev.Spec, cur.Spec, fmt.Sprintf("generation %d", prev.Generation), fmt.Sprintf("generation %d", gen))
	}
	writeJSON(w, http.StatusOK, out)
}
