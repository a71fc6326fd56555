package api

import (
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/common/spec"
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
}

// MaxHistory caps ?limit= of GET /v1/apps/{name}/history.
const MaxHistory = 1000

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
		out = append(out, RevisionView{Generation: rv.Generation, Image: rv.Image, ImageRef: rv.ImageRef, Actor: rv.Actor, At: rv.At})
	}
	writeJSON(w, http.StatusOK, out)
}
