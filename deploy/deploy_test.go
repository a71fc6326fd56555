package deploy

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"sigs.k8s.io/yaml"
)

const runbookBase = "https://github.com/berthhq/berth/blob/main/docs/operations.md#"

type ruleFile struct {
	Groups []struct {
		Name  string `json:"name"`
		Rules []rule `json:"rules"`
	} `json:"groups"`
}

type rule struct {
	Alert       string            `json:"alert"`
	Record      string            `json:"record"`
	Expr        string            `json:"expr"`
	For         *string           `json:"for"`
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	require.NoError(t, yaml.UnmarshalStrict(b, v), path)
}

func rules(t *testing.T) ([]rule, map[string]bool) {
	t.Helper()
	var f ruleFile
	readYAML(t, filepath.Join("prometheus", "alerts.yml"), &f)
	var all []rule
	records := map[string]bool{}
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			if r.Record != "" {
				records[r.Record] = true
			}
			all = append(all, r)
		}
	}
	require.NotEmpty(t, all)
	return all, records
}

// anchors are the GitHub anchors of a Markdown file's headings.
func anchors(t *testing.T, path string) map[string]bool {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	drop := regexp.MustCompile(`[^a-z0-9 _-]`)
	out := map[string]bool{}
	for _, line := range strings.Split(string(b), "\n") {
		if title, ok := strings.CutPrefix(line, "#"); ok {
			title = strings.TrimSpace(strings.TrimLeft(title, "#"))
			out[strings.ReplaceAll(drop.ReplaceAllString(strings.ToLower(title), ""), " ", "-")] = true
		}
	}
	return out
}

func TestProblems(t *testing.T) {
	t.Parallel()
	series := map[string][]string{
		"berth_lbagent_reloads_total":                   {"result", "instance", "job"},
		"berth_lbagent_request_duration_seconds_bucket": {"app", "le", "instance", "job"},
		"berth_scheduler_is_leader":                     {"instance", "job"},
	}
	records := map[string]bool{"berth:leader:max": true}
	for _, tc := range []struct {
		name, expr string
		want       []string
	}{
		{"known", `sum by (instance) (rate(berth_lbagent_reloads_total{result="failed", job=~"a|b"}[5m]))`, nil},
		{"histogram", `histogram_quantile(0.95, sum by (app, le) (rate(berth_lbagent_request_duration_seconds_bucket[5m])))`, nil},
		{"recorded", `changes(berth:leader:max[10m]) > 3`, nil},
		{"a label value with an operator in it", `berth_lbagent_reloads_total{result=~"a=b|c"}`, nil},
		{"a misspelt metric", `rate(berth_lbagent_reload_total[5m])`, []string{"metric berth_lbagent_reload_total is not registered"}},
		{"a histogram without its suffix", `berth_lbagent_request_duration_seconds`, []string{"not registered"}},
		{"an unknown recorded series", `berth:leader:min`, []string{"recorded series berth:leader:min has no recording rule"}},
		{"a label its metric lacks", `berth_lbagent_reloads_total{app="shop"}`, []string{"berth_lbagent_reloads_total has no label app"}},
		{"a grouping label no metric has", `sum by (app) (berth_lbagent_reloads_total)`, []string{"no metric of the expression has label app"}},
		{"label_values of a label the metric lacks", `label_values(berth_scheduler_is_leader, app)`, []string{"label_values: berth_scheduler_is_leader has no label app"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := problems(tc.expr, series, records)
			require.Len(t, got, len(tc.want), "%q", got)
			for i, w := range tc.want {
				require.Contains(t, got[i], w)
			}
		})
	}
}

// TestRulesNameRegisteredMetrics fails when an alerting rule names a
// metric, or a label, that no daemon registers.
func TestRulesNameRegisteredMetrics(t *testing.T) {
	t.Parallel()
	series := known(t, "..")
	all, records := rules(t)
	for _, r := range all {
		assert.Empty(t, problems(r.Expr, series, records), "rule %s%s: %s", r.Alert, r.Record, r.Expr)
	}
}

// TestAlertsAreComplete checks what an operator needs of each alert: a
// for, a severity, a summary and a description, and a runbook that exists.
func TestAlertsAreComplete(t *testing.T) {
	t.Parallel()
	all, _ := rules(t)
	docs := anchors(t, filepath.Join("..", "docs", "operations.md"))
	seen := map[string]bool{}
	for _, r := range all {
		if r.Alert == "" {
			continue
		}
		require.False(t, seen[r.Alert], "alert %s twice", r.Alert)
		seen[r.Alert] = true
		require.NotNil(t, r.For, "%s has no for", r.Alert)
		require.Contains(t, []string{"critical", "warning"}, r.Labels["severity"], "%s's severity", r.Alert)
		require.NotEmpty(t, r.Annotations["summary"], "%s's summary", r.Alert)
		require.NotEmpty(t, r.Annotations["description"], "%s's description", r.Alert)
		anchor, ok := strings.CutPrefix(r.Annotations["runbook_url"], runbookBase)
		require.True(t, ok, "%s's runbook_url must start with %s", r.Alert, runbookBase)
		require.True(t, docs[anchor], "%s's runbook #%s is not a heading of docs/operations.md", r.Alert, anchor)
	}
	require.NotEmpty(t, seen)
}

type ruleTests struct {
	RuleFiles          []string `json:"rule_files"`
	EvaluationInterval string   `json:"evaluation_interval"`
	Tests              []struct {
		Name          string            `json:"name"`
		Interval      string            `json:"interval"`
		InputSeries   []json.RawMessage `json:"input_series"`
		AlertRuleTest []struct {
			EvalTime  string            `json:"eval_time"`
			Alertname string            `json:"alertname"`
			ExpAlerts []json.RawMessage `json:"exp_alerts"`
		} `json:"alert_rule_test"`
	} `json:"tests"`
}

// TestEveryAlertIsUnitTested checks that alerts_test.yml, which make rules
// runs with promtool, has for every alert a case where it fires and one
// where it does not.
func TestEveryAlertIsUnitTested(t *testing.T) {
	t.Parallel()
	var f ruleTests
	readYAML(t, filepath.Join("prometheus", "alerts_test.yml"), &f)
	require.Equal(t, []string{"alerts.yml"}, f.RuleFiles)
	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, tc := range f.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			} else {
				quiet[a.Alertname] = true
			}
		}
	}
	all, _ := rules(t)
	for _, r := range all {
		if r.Alert != "" {
			require.True(t, fires[r.Alert], "alerts_test.yml has no case where %s fires", r.Alert)
			require.True(t, quiet[r.Alert], "alerts_test.yml has no case where %s does not fire", r.Alert)
		}
	}
}

// jsonStrings collects every string in a JSON value.
func jsonStrings(v any, out *[]string) {
	switch v := v.(type) {
	case string:
		*out = append(*out, v)
	case []any:
		for _, e := range v {
			jsonStrings(e, out)
		}
	case map[string]any:
		for _, e := range v {
			jsonStrings(e, out)
		}
	}
}

// walkKey calls f with the value of every key named key in a JSON value.
func walkKey(v any, key string, f func(any)) {
	switch v := v.(type) {
	case []any:
		for _, e := range v {
			walkKey(e, key, f)
		}
	case map[string]any:
		for k, e := range v {
			if k == key {
				f(e)
			}
			walkKey(e, key, f)
		}
	}
}

// TestDashboard checks that the Grafana dashboard is JSON and that its
// queries, variables and texts name only registered metrics and labels.
func TestDashboard(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile(filepath.Join("grafana", "berth.json"))
	require.NoError(t, err)
	var d map[string]any
	require.NoError(t, json.Unmarshal(b, &d), "grafana/berth.json is not JSON")
	require.Equal(t, "berth", d["uid"])
	series := known(t, "..")
	_, records := rules(t)
	var all []string
	jsonStrings(d, &all)
	named := 0
	for _, s := range all {
		assert.Empty(t, problems(s, series, records), "grafana/berth.json: %s", s)
		if metricName.MatchString(s) {
			named++
		}
	}
	require.Greater(t, named, 10, "the dashboard's queries")
	// Every query goes to the Prometheus that the datasource variable picks.
	sources := 0
	walkKey(d, "datasource", func(v any) {
		if ds, ok := v.(map[string]any); ok && ds["type"] == "prometheus" {
			require.Equal(t, "${datasource}", ds["uid"], "a panel or query with a fixed Prometheus")
			sources++
		}
	})
	require.Greater(t, sources, 10)
	// Every panel that queries has an expression.
	panels, ok := d["panels"].([]any)
	require.True(t, ok, "panels")
	for _, p := range panels {
		p := p.(map[string]any)
		targets, _ := p["targets"].([]any)
		for _, tg := range targets {
			require.NotEmpty(t, tg.(map[string]any)["expr"], "panel %v", p["title"])
		}
	}
}

// TestComposeMonitoring checks the compose stack's Prometheus, Alertmanager
// and Grafana provisioning against the rules and the dashboard: the jobs
// the rules name are scraped, the rules are loaded, alerts go to a
// receiver that exists, Grafana has the datasource the dashboard uses.
func TestComposeMonitoring(t *testing.T) {
	t.Parallel()
	dir := filepath.Join("..", "compose")
	var prom struct {
		RuleFiles []string `json:"rule_files"`
		Alerting  struct {
			Alertmanagers []struct {
				StaticConfigs []struct {
					Targets []string `json:"targets"`
				} `json:"static_configs"`
			} `json:"alertmanagers"`
		} `json:"alerting"`
		ScrapeConfigs []struct {
			JobName       string `json:"job_name"`
			StaticConfigs []struct {
				Targets []string `json:"targets"`
			} `json:"static_configs"`
		} `json:"scrape_configs"`
	}
	b, err := os.ReadFile(filepath.Join(dir, "prometheus", "prometheus.yml"))
	require.NoError(t, err)
	require.NoError(t, yaml.Unmarshal(b, &prom))
	require.Equal(t, []string{"/etc/prometheus/rules/alerts.yml"}, prom.RuleFiles)
	require.NotEmpty(t, prom.Alerting.Alertmanagers)
	jobs := map[string][]string{}
	for _, sc := range prom.ScrapeConfigs {
		for _, st := range sc.StaticConfigs {
			jobs[sc.JobName] = append(jobs[sc.JobName], st.Targets...)
		}
	}
	for job, want := range map[string][]string{
		"berth-scheduler": {"scheduler-1:7070", "scheduler-2:7070"},
		"berth-healthd":   {"healthd-1:9103", "healthd-2:9103"},
		"berth-lbagent":   {"lb:9102"},
	} {
		require.ElementsMatch(t, want, jobs[job], "job %s", job)
	}
	all, _ := rules(t)
	for _, r := range all {
		if r.Alert == "BerthDaemonDown" {
			require.Contains(t, r.Expr, `job=~"berth-(scheduler|healthd|lbagent)"`, "BerthDaemonDown names the compose stack's jobs")
		}
	}

	var am struct {
		Route struct {
			Receiver string `json:"receiver"`
		} `json:"route"`
		Receivers []map[string]any `json:"receivers"`
	}
	b, err = os.ReadFile(filepath.Join(dir, "alertmanager", "alertmanager.yml"))
	require.NoError(t, err)
	require.NoError(t, yaml.Unmarshal(b, &am))
	require.NotEmpty(t, am.Route.Receiver)
	require.True(t, slices.ContainsFunc(am.Receivers, func(r map[string]any) bool { return r["name"] == am.Route.Receiver }),
		"the default receiver %s is defined", am.Route.Receiver)

	var ds struct {
		Datasources []struct {
			Type      string `json:"type"`
			URL       string `json:"url"`
			IsDefault bool   `json:"isDefault"`
		} `json:"datasources"`
	}
	b, err = os.ReadFile(filepath.Join(dir, "grafana", "provisioning", "datasources", "prometheus.yml"))
	require.NoError(t, err)
	require.NoError(t, yaml.Unmarshal(b, &ds))
	require.Len(t, ds.Datasources, 1)
	require.Equal(t, "prometheus", ds.Datasources[0].Type)
	require.Equal(t, "http://prometheus:9090", ds.Datasources[0].URL)
	// The dashboard queries whichever Prometheus its variable picks: the
	// default one here, or one chosen when it is imported elsewhere.
	require.True(t, ds.Datasources[0].IsDefault)
	var prov struct {
		APIVersion int `json:"apiVersion"`
		Providers  []struct {
			Name            string `json:"name"`
			Folder          string `json:"folder"`
			Type            string `json:"type"`
			DisableDeletion bool   `json:"disableDeletion"`
			AllowUIUpdates  bool   `json:"allowUiUpdates"`
			Options         struct {
				Path string `json:"path"`
			} `json:"options"`
		} `json:"providers"`
	}
	readYAML(t, filepath.Join(dir, "grafana", "provisioning", "dashboards", "berth.yml"), &prov)
	require.Len(t, prov.Providers, 1)
	require.Equal(t, "/var/lib/grafana/dashboards/berth", prov.Providers[0].Options.Path, "where compose mounts the dashboard")
}

// TestComposeMountsMonitoring checks that the compose stack's Prometheus,
// Alertmanager and Grafana mount the files this package checks, from paths
// that exist (docker-compose config does not look at a bind mount's source).
func TestComposeMountsMonitoring(t *testing.T) {
	t.Parallel()
	var c struct {
		Services map[string]struct {
			Image   string   `json:"image"`
			Volumes []string `json:"volumes"`
			Ports   []string `json:"ports"`
		} `json:"services"`
	}
	b, err := os.ReadFile(filepath.Join("..", "compose", "docker-compose.yml"))
	require.NoError(t, err)
	require.NoError(t, yaml.Unmarshal(b, &c))
	for svc, want := range map[string][]string{
		"prometheus":   {"./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro", "../deploy/prometheus:/etc/prometheus/rules:ro"},
		"alertmanager": {"./alertmanager/alertmanager.yml:/etc/alertmanager/alertmanager.yml:ro"},
		"grafana":      {"./grafana/provisioning:/etc/grafana/provisioning:ro", "../deploy/grafana:/var/lib/grafana/dashboards/berth:ro"},
	} {
		s, ok := c.Services[svc]
		require.True(t, ok, "service %s", svc)
		require.NotEmpty(t, s.Image, svc)
		for _, v := range want {
			require.Contains(t, s.Volumes, v, svc)
			_, err := os.Stat(filepath.Join("..", "compose", strings.SplitN(v, ":", 2)[0]))
			require.NoError(t, err, "%s mounts %s", svc, v)
		}
		for _, p := range s.Ports {
			require.True(t, strings.HasPrefix(p, "127.0.0.1:"), "%s publishes %s on loopback only", svc, p)
		}
	}
}
