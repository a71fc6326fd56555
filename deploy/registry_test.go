package deploy

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// metric is one registered Prometheus metric: its type and its labels.
type metric struct {
	kind   string // counter, gauge, histogram or summary
	labels []string
}

// described are metrics a custom collector exports (prometheus.NewDesc
// and MustNewConstMetric, at scrape time): their type and labels are given
// here, and the test requires a NewDesc of each name in the code.
var described = map[string]metric{
	"berth_healthd_app_instances": {"gauge", []string{"app", "status"}},
}

// daemonDirs are the folders whose non-test Go files register the metrics
// that Berth's daemons serve on /metrics.
var daemonDirs = []string{"scheduler", "healthd", "lbagent", "common"}

var optsKinds = map[string]string{"CounterOpts": "counter", "GaugeOpts": "gauge", "HistogramOpts": "histogram", "SummaryOpts": "summary"}

// eachCall calls fn with every call expression in the non-test Go files
// under root's daemon folders, and where it is.
func eachCall(t *testing.T, root string, fn func(pos string, call *ast.CallExpr)) {
	t.Helper()
	fset := token.NewFileSet()
	for _, dir := range daemonDirs {
		err := filepath.WalkDir(filepath.Join(root, dir), func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() && d.Name() == "testdata" {
				return filepath.SkipDir
			}
			if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return nil
			}
			f, err := parser.ParseFile(fset, path, nil, 0)
			if err != nil {
				return err
			}
			ast.Inspect(f, func(n ast.Node) bool {
				if call, ok := n.(*ast.CallExpr); ok {
					fn(fset.Position(call.Pos()).String(), call)
				}
				return true
			})
			return nil
		})
		require.NoError(t, err)
	}
}

// registered reads every prometheus.New…(prometheus.…Opts{Name: "…"}, […])
// call under root's daemon folders. A metric whose name or labels are not
// literals fails: this check could not see it.
func registered(t *testing.T, root string) map[string]metric {
	t.Helper()
	found := map[string]metric{}
	where := map[string]string{}
	eachCall(t, root, func(pos string, call *ast.CallExpr) {
		if !isPrometheus(call.Fun, "New") || len(call.Args) == 0 {
			return
		}
		kind, lit := optsLiteral(call.Args[0])
		if lit == nil {
			return
		}
		name, ok := nameOf(lit)
		require.True(t, ok, "%s: a metric whose Name is not a string literal: this check cannot read it", pos)
		m := metric{kind: kind}
		// Only the …Vec constructors take labels (the …Func ones a function).
		if strings.HasSuffix(call.Fun.(*ast.SelectorExpr).Sel.Name, "Vec") {
			require.Len(t, call.Args, 2, "%s: %s", pos, name)
			labels, ok := call.Args[1].(*ast.CompositeLit)
			require.True(t, ok, "%s: %s's labels are not a []string literal: this check cannot read them", pos, name)
			for _, e := range labels.Elts {
				m.labels = append(m.labels, unquote(t, pos, e))
			}
		}
		if prev, ok := found[name]; ok {
			require.Equal(t, prev, m, "%s registered at %s and %s with other types or labels", name, where[name], pos)
		}
		found[name], where[name] = m, pos
	})
	return found
}

// helps returns the Help of every metric registered with Opts, and of
// every prometheus.NewDesc, by name (what a literal or a sum of literals
// says; "" otherwise).
func helps(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	eachCall(t, root, func(_ string, call *ast.CallExpr) {
		switch {
		case isPrometheus(call.Fun, "NewDesc") && len(call.Args) > 1:
			if name, ok := stringOf(call.Args[0]); ok {
				out[name], _ = stringOf(call.Args[1])
			}
		case isPrometheus(call.Fun, "New") && len(call.Args) > 0:
			if _, lit := optsLiteral(call.Args[0]); lit != nil {
				if name, ok := nameOf(lit); ok && out[name] == "" {
					out[name] = fieldString(lit, "Help")
				}
			}
		}
	})
	return out
}

// stringOf evaluates a string literal or a sum of them.
func stringOf(e ast.Expr) (string, bool) {
	switch v := e.(type) {
	case *ast.BasicLit:
		if v.Kind != token.STRING {
			return "", false
		}
		s, err := strconv.Unquote(v.Value)
		return s, err == nil
	case *ast.BinaryExpr:
		if v.Op != token.ADD {
			return "", false
		}
		a, ok := stringOf(v.X)
		b, ok2 := stringOf(v.Y)
		return a + b, ok && ok2
	case *ast.ParenExpr:
		return stringOf(v.X)
	}
	return "", false
}

// fieldString is a string field of a composite literal ("" if absent or
// not a literal).
func fieldString(lit *ast.CompositeLit, field string) string {
	for _, e := range lit.Elts {
		if kv, ok := e.(*ast.KeyValueExpr); ok {
			if key, ok := kv.Key.(*ast.Ident); ok && key.Name == field {
				s, _ := stringOf(kv.Value)
				return s
			}
		}
	}
	return ""
}

// newDescs returns the names given as literals to prometheus.NewDesc
// under root's daemon folders.
func newDescs(t *testing.T, root string) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	eachCall(t, root, func(pos string, call *ast.CallExpr) {
		if isPrometheus(call.Fun, "NewDesc") && len(call.Args) > 0 {
			if lit, ok := call.Args[0].(*ast.BasicLit); ok && lit.Kind == token.STRING {
				out[unquote(t, pos, lit)] = true
			}
		}
	})
	return out
}

func isPrometheus(e ast.Expr, prefix string) bool {
	sel, ok := e.(*ast.SelectorExpr)
	if !ok {
		return false
	}
	pkg, ok := sel.X.(*ast.Ident)
	return ok && pkg.Name == "prometheus" && strings.HasPrefix(sel.Sel.Name, prefix)
}

// optsLiteral returns the kind and literal of a prometheus.…Opts{…} (or
// &prometheus.…Opts{…}) argument.
func optsLiteral(e ast.Expr) (string, *ast.CompositeLit) {
	if u, ok := e.(*ast.UnaryExpr); ok && u.Op == token.AND {
		e = u.X
	}
	lit, ok := e.(*ast.CompositeLit)
	if !ok || !isPrometheus(lit.Type, "") {
		return "", nil
	}
	kind, ok := optsKinds[lit.Type.(*ast.SelectorExpr).Sel.Name]
	if !ok {
		return "", nil
	}
	return kind, lit
}

func nameOf(lit *ast.CompositeLit) (string, bool) {
	for _, e := range lit.Elts {
		kv, ok := e.(*ast.KeyValueExpr)
		if !ok {
			continue
		}
		if key, ok := kv.Key.(*ast.Ident); ok && key.Name == "Name" {
			if s, ok := kv.Value.(*ast.BasicLit); ok && s.Kind == token.STRING {
				name, err := strconv.Unquote(s.Value)
				return name, err == nil
			}
			return "", false
		}
	}
	return "", false
}

func unquote(t *testing.T, pos string, e ast.Expr) string {
	s, ok := e.(*ast.BasicLit)
	require.True(t, ok && s.Kind == token.STRING, "%s: a label that is not a string literal", pos)
	v, err := strconv.Unquote(s.Value)
	require.NoError(t, err, pos)
	return v
}

// series maps each series name that the metrics expose (a histogram's
// _bucket, _sum and _count) to the labels it carries, the target labels
// that Prometheus adds included.
func series(ms map[string]metric) map[string][]string {
	target := []string{"instance", "job"}
	out := map[string][]string{}
	for name, m := range ms {
		labels := append(slices.Clone(m.labels), target...)
		switch m.kind {
		case "histogram":
			out[name+"_bucket"] = append(slices.Clone(labels), "le")
			out[name+"_sum"], out[name+"_count"] = labels, labels
		case "summary":
			out[name] = append(slices.Clone(labels), "quantile")
			out[name+"_sum"], out[name+"_count"] = labels, labels
		default:
			out[name] = labels
		}
	}
	return out
}

// known is every metric the rules and the dashboard may name: what the
// daemons register, and the pending ones.
func known(t *testing.T, root string) map[string][]string {
	t.Helper()
	reg := registered(t, root)
	require.NotEmpty(t, reg, "no metric registrations found under %v", daemonDirs)
	all := map[string]metric{}
	descs := newDescs(t, root)
	for name, m := range described {
		require.True(t, descs[name], "%s: no prometheus.NewDesc(%q, …) under %v", name, name, daemonDirs)
		_, twice := reg[name]
		require.False(t, twice, "%s is registered with Opts too: take it out of described", name)
		all[name] = m
	}
	for name, m := range reg {
		all[name] = m
	}
	return series(all)
}

func TestRegisteredReadsTheDaemons(t *testing.T) {
	t.Parallel()
	reg := registered(t, "..")
	// A few that the rules rely on, with their labels, as the code has them.
	for name, want := range map[string]metric{
		"berth_scheduler_is_leader":               {kind: "gauge"},
		"berth_scheduler_app_ready_replicas":      {kind: "gauge", labels: []string{"app"}},
		"berth_lbagent_nginx_test_failures_total": {kind: "counter", labels: []string{"app"}},
		"berth_healthd_probe_duration_seconds":    {kind: "histogram", labels: []string{"app"}},
		"berth_healthd_unsealed_messages_total":   {kind: "counter"},
	} {
		require.Equal(t, want, reg[name], name)
	}
	s := series(reg)
	require.ElementsMatch(t, []string{"app", "instance", "job", "le"}, s["berth_healthd_probe_duration_seconds_bucket"])
	require.NotContains(t, s, "berth_healthd_probe_duration_seconds")
}
