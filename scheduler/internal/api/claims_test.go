package api

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/spec"
)

// appSpec is a spec of app name with the given routing block (YAML,
// indented under routing:).
func appSpec(name, routing string) string {
	return fmt.Sprintf("name: %s\nimage: %s:1\nport: 8080\nreplicas: 1\nrouting:\n%s", name, name, routing)
}

// fieldErrors are the field errors of a refused apply, by path.
func fieldErrors(t *testing.T, obj map[string]any) map[string]string {
	t.Helper()
	out := map[string]string{}
	fields, _ := obj["fields"].([]any)
	for _, f := range fields {
		m := f.(map[string]any)
		out[m["path"].(string)] = m["message"].(string)
	}
	return out
}

// TestHostOwnership: the audit's takeovers of another app's host are
// refused at apply, each naming the field, the host and its owner; the
// owner shares its host by name, and names the paths a member's header or
// regex rule may take requests from.
func TestHostOwnership(t *testing.T) {
	t.Parallel()
	c := newAPI(t, "")
	// An app created before bank, which names bank's host only later.
	code, _, raw := c.do("PUT", "/v1/apps/old", appSpec("old", "  hosts: [old.test]\n"))
	require.Equal(t, 200, code, string(raw))
	code, _, raw = c.do("PUT", "/v1/apps/bank", appSpec("bank", "  hosts: [bank.test]\n  paths: [/, /login]\n"))
	require.Equal(t, 200, code, string(raw))

	const notShared = "host bank.test belongs to app bank, which claimed it first: app %s may route there only when bank lists it in routing.share_with"
	for _, tc := range []struct{ name, app, routing, field, want string }{
		{"regex", "evil", "  hosts: [bank.test]\n  rules: [{path: '^/', match: regex}]\n", "routing.hosts[0]", fmt.Sprintf(notShared, "evil")},
		{"header", "evil", "  hosts: [bank.test]\n  rules: [{path: /, headers: {Cookie: '~.'}}]\n", "routing.hosts[0]", fmt.Sprintf(notShared, "evil")},
		{"tls", "evil", "  hosts: [Bank.Test]\n  paths: [/]\n  tls: {self_signed: true}\n", "routing.hosts[0]", fmt.Sprintf(notShared, "evil")},
		{"redirect", "evil", "  hosts: [evil.test, bank.test]\n  paths: [/x]\n  tls: {certificate: /etc/evil.crt, key: /etc/evil.key, redirect_http: true}\n", "routing.hosts[1]", fmt.Sprintf(notShared, "evil")},
		{"an older app", "old", "  hosts: [old.test, bank.test]\n  paths: [/zzz]\n", "routing.hosts[1]", fmt.Sprintf(notShared, "old")},
	} {
		code, obj, raw := c.do("PUT", "/v1/apps/"+tc.app, appSpec(tc.app, tc.routing))
		require.Equal(t, 400, code, "%s: %s", tc.name, raw)
		require.Equal(t, map[string]string{tc.field: tc.want}, fieldErrors(t, obj), tc.name)
	}

	// bank shares with shop, and lets canary's header rules over its /.
	code, _, raw = c.do("PUT", "/v1/apps/bank", appSpec("bank", "  hosts: [bank.test]\n  paths: [/, /login]\n  share_with: [shop, {app: canary, paths: [/]}]\n"))
	require.Equal(t, 200, code, string(raw))
	code, _, raw = c.do("PUT", "/v1/apps/shop", appSpec("shop", "  hosts: [bank.test]\n  paths: [/shop]\n  rules: [{path: '^/shop/[0-9]+$', match: regex}]\n"))
	require.Equal(t, 200, code, "a member routes paths of its own: %s", raw)
	for _, tc := range []struct{ name, routing, field, want string }{
		{"regex over /", "  rules: [{path: '^/', match: regex}]\n", "routing.rules[0].path",
			"regex path ^/ on host bank.test would take requests for path / of app bank, which owns the host: bank must name / in the paths of its routing.share_with entry for app shop"},
		{"cookie over /", "  rules: [{path: /, headers: {Cookie: '~.'}}]\n", "routing.rules[0].path",
			"path / with a header match on host bank.test would take requests for path / of app bank, which owns the host: bank must name / in the paths of its routing.share_with entry for app shop"},
		{"the owner's path", "  paths: [/login]\n", "routing.paths[0]", "path /login on host bank.test is already routed to app bank, which claimed it first"},
		{"tls", "  paths: [/shop]\n  tls: {self_signed: true}\n", "routing.tls",
			"host bank.test belongs to app bank, which alone sets its TLS and redirect: remove routing.tls, or give app shop hosts of its own"},
	} {
		code, obj, raw := c.do("PUT", "/v1/apps/shop", appSpec("shop", "  hosts: [bank.test]\n"+tc.routing))
		require.Equal(t, 400, code, "%s: %s", tc.name, raw)
		require.Equal(t, map[string]string{tc.field: tc.want}, fieldErrors(t, obj), tc.name)
	}
	code, _, raw = c.do("PUT", "/v1/apps/canary", appSpec("canary", "  hosts: [bank.test]\n  rules: [{path: /, headers: {X-Canary: '1'}}]\n"))
	require.Equal(t, 200, code, "a canary by header the owner names: %s", raw)
	code, obj, _ := c.do("PUT", "/v1/apps/canary", appSpec("canary", "  hosts: [bank.test]\n  rules: [{path: /login, headers: {X-Canary: '1'}}]\n"))
	require.Equal(t, 400, code)
	require.Contains(t, fieldErrors(t, obj)["routing.rules[0].path"], "bank must name /login")

	// Every app on the default server: the first owns it.
	code, _, raw = c.do("PUT", "/v1/apps/web", appSpec("web", "  paths: [/]\n"))
	require.Equal(t, 200, code, string(raw))
	code, obj, _ = c.do("PUT", "/v1/apps/api", appSpec("api", "  paths: [/api]\n"))
	require.Equal(t, 400, code)
	require.Equal(t, map[string]string{"routing.hosts": "the default server (apps without routing.hosts) belongs to app web, which claimed it first: app api may route there only when web lists it in routing.share_with"}, fieldErrors(t, obj))

	// Once bank is gone, its first member owns the host; once every app
	// that claimed it is gone, it is free.
	code, _, _ = c.do("DELETE", "/v1/apps/bank", "")
	require.Equal(t, 202, code)
	code, obj, _ = c.do("PUT", "/v1/apps/old", appSpec("old", "  hosts: [old.test, bank.test]\n  paths: [/]\n"))
	require.Equal(t, 400, code)
	require.Contains(t, fieldErrors(t, obj)["routing.hosts[1]"], "host bank.test belongs to app shop")
	for _, app := range []string{"shop", "canary"} {
		code, _, _ = c.do("DELETE", "/v1/apps/"+app, "")
		require.Equal(t, 202, code)
	}
	code, _, raw = c.do("PUT", "/v1/apps/old", appSpec("old", "  hosts: [old.test, bank.test]\n  paths: [/]\n"))
	require.Equal(t, 200, code, string(raw))
}

// TestConflictsShown: GET of an app says what of its routes it does not
// get, and why, as a record that reached the store past the check (an app
// stored before ownership, say) does not get them.
func TestConflictsShown(t *testing.T) {
	t.Parallel()
	c := newAPI(t, "")
	code, _, raw := c.do("PUT", "/v1/apps/bank", appSpec("bank", "  hosts: [bank.test]\n"))
	require.Equal(t, 200, code, string(raw))
	late, err := spec.Load([]byte(appSpec("late", "  hosts: [bank.test]\n  paths: [/x]\n")))
	require.NoError(t, err)
	_, _, err = c.st.Apply(context.Background(), late, nil)
	require.NoError(t, err)
	code, obj, _ := c.do("GET", "/v1/apps/late", "")
	require.Equal(t, 200, code)
	require.Equal(t, []any{"routing.hosts[0]: host bank.test belongs to app bank, which claimed it first: app late may route there only when bank lists it in routing.share_with"}, obj["conflicts"])
	_, obj, _ = c.do("GET", "/v1/apps/bank", "")
	require.Nil(t, obj["conflicts"])
}

// TestSimultaneousClaims: two teams applying the same host at once are
// decided by one rule. Each apply is checked against what the database
// holds of the apps that claim the host; of the two, exactly one owns it,
// and the other is refused, or stored with the host as its conflict (the
// same route table that lbagent enforces: it gets no route there).
func TestSimultaneousClaims(t *testing.T) {
	t.Parallel()
	c := newAPI(t, "")
	const pairs = 8
	teams := []string{"red", "blue"}
	codes := make([][2]int, pairs)
	var wg sync.WaitGroup
	for i := range pairs {
		for j, team := range teams {
			wg.Go(func() {
				name := fmt.Sprintf("%s-%d", team, i)
				req, err := http.NewRequest("PUT", c.url+"/v1/apps/"+name, strings.NewReader(appSpec(name, fmt.Sprintf("  hosts: [race-%d.test]\n", i))))
				if err != nil {
					return
				}
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					return
				}
				codes[i][j] = resp.StatusCode
				resp.Body.Close()
			})
		}
	}
	wg.Wait()
	for i := range pairs {
		owners := 0
		for j, team := range teams {
			if codes[i][j] == 400 {
				continue
			}
			require.Equal(t, 200, codes[i][j], "pair %d", i)
			code, obj, raw := c.do("GET", fmt.Sprintf("/v1/apps/%s-%d", team, i), "")
			require.Equal(t, 200, code, string(raw))
			if obj["conflicts"] == nil {
				owners++
				continue
			}
			require.Contains(t, fmt.Sprint(obj["conflicts"]), fmt.Sprintf("host race-%d.test belongs to app", i))
		}
		require.Equal(t, 1, owners, "pair %d: answers %v", i, codes[i])
	}
}
