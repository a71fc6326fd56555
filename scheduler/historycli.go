package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/scheduler/internal/api"
)

// history prints an app's generations, newest first: who made each and
// what it changed; or one generation's spec and its diff.
func history(ctx context.Context, h *historyCmd, out io.Writer) error {
	cl, err := newClient(h.clientFlags)
	if err != nil {
		return err
	}
	if h.Generation != "" {
		gen, err := strconv.ParseInt(h.Generation, 10, 64)
		if err != nil || gen < 1 {
			return &apiError{status: http.StatusBadRequest, body: api.Error{Error: fmt.Sprintf(
				"generation %q: must be a generation of the app (a whole number from 1): scheduler history %s lists them", msg.Truncate(h.Generation, 32), h.App)}}
		}
		return generation(ctx, cl, h.App, gen, h.Output, out)
	}
	var revs []api.RevisionView
	if err := cl.do(ctx, "GET", fmt.Sprintf("/v1/apps/%s/history?limit=%d", url.PathEscape(h.App), h.Limit), nil, &revs); err != nil {
		return err
	}
	return show(out, h.Output, revs, func(w io.Writer) {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "GENERATION\tIMAGE\tPINNED TO\tBY\tAGE\tCHANGE")
		for _, r := range revs {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", r.Generation, r.Image, cmp.Or(r.ImageRef, "-"), cmp.Or(r.Actor, "-"), age(r.At), cmp.Or(r.Summary, "-"))
		}
		tw.Flush()
	})
}

// generation prints one generation: who made it and when, what changed,
// its spec and its diff against the kept generation before it.
func generation(ctx context.Context, cl *client, app string, gen int64, format string, out io.Writer) error {
	var g api.GenerationView
	if err := cl.do(ctx, "GET", fmt.Sprintf("/v1/apps/%s/history/%d", url.PathEscape(app), gen), nil, &g); err != nil {
		return err
	}
	return show(out, format, g, func(w io.Writer) {
		fmt.Fprintf(w, "%s generation %d, by %s %s ago: %s\n", app, g.Generation, cmp.Or(g.Actor, "-"), age(g.At), cmp.Or(g.Summary, "-"))
		if g.ImageRef != "" {
			fmt.Fprintf(w, "image %s pinned to %s\n", g.Image, g.ImageRef)
		}
		fmt.Fprintln(w)
		fmt.Fprint(w, g.YAML)
		switch {
		case g.Previous == 0:
			fmt.Fprintln(w, "\n(no earlier generation is kept: no diff)")
		case g.Diff == "":
			fmt.Fprintf(w, "\n(the same spec as generation %d)\n", g.Previous)
		default:
			fmt.Fprintf(w, "\ndiff against generation %d:\n%s", g.Previous, g.Diff)
		}
	})
}

// printPlan prints what an apply would do (apply --dry-run).
func printPlan(w io.Writer, file string, p api.PlanView) {
	switch {
	case p.New:
		fmt.Fprintf(w, "%s: plan of %s (dry run, nothing changed): a new app\n", p.App, file)
	case !p.Changed:
		fmt.Fprintf(w, "%s: plan of %s (dry run, nothing changed): no change against generation %d\n", p.App, file, p.Generation)
	default:
		fmt.Fprintf(w, "%s: plan of %s (dry run, nothing changed): generation %d → %d: %s\n", p.App, file, p.Generation, p.Generation+1, p.Summary)
	}
	if p.ImageNote != "" {
		fmt.Fprintln(w, p.ImageNote)
	}
	if p.Diff != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimRight(p.Diff, "\n"))
	}
	fmt.Fprintln(w, "\nwould happen:")
	for _, a := range p.Actions {
		fmt.Fprintf(w, "  - %s\n", a.Message)
	}
	if p.Changed && !p.PlacementChecked {
		fmt.Fprintln(w, "  (capacity not checked: no host is registered, or nothing new to place)")
	}
}
