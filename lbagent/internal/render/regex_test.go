package render

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/spec"
	"github.com/berthhq/berth/internal/testrig"
	"github.com/berthhq/berth/lbagent/internal/state"
	"github.com/berthhq/berth/templates"
)

// TestBacktrackingAttackServe runs a real nginx on the whole config
// lbagent writes when it owns nginx.conf (pcre_jit on) with the regexes
// nearest to issue 24's attack that the grammar allows, a path regex and
// a header regex, and sends the attack: 24 'a' and a '!' (and an 8 KiB
// one). A 500 is PCRE's match-limit error, the deterministic sign of
// catastrophic backtracking; every answer must be another status. A
// control server in the same nginx, written by hand with the refused
// regex `^/(\w+)+$`, answers the same request 500, so the check can fail.
func TestBacktrackingAttackServe(t *testing.T) {
	t.Parallel()
	require.Error(t, spec.CheckRegex(`^/(\w+)+$`), "the control's regex is the one the grammar refuses")
	a := app("shop", 0, "shop.test")
	a.Servers = []state.Server{{Instance: "i0", Address: backend(t, "shop"), Weight: 1}}
	a.Spec.Routing.Rules = []spec.Rule{
		{Path: `^/\w+$`, Match: spec.MatchRegex, ResponseHeaders: map[string]string{"X-Rule": "regex"}},
		{Path: "/h", Headers: map[string]string{"X-A": `~^\w+$`}, ResponseHeaders: map[string]string{"X-Rule": "header"}},
	}
	o := opts
	o.AccessLogSocket, o.Main = "", true
	o.HTTPListen = fmt.Sprintf("127.0.0.1:%d", testrig.FreePort(t))
	o.StatusListen = fmt.Sprintf("127.0.0.1:%d", testrig.FreePort(t))
	r, err := Load(templates.FS)
	require.NoError(t, err)
	d, conflicts := Layout(state.Snapshot{Apps: []state.App{a}}, 1, o)
	require.Empty(t, conflicts)
	out, err := r.Render(d, true)
	require.NoError(t, err)
	conf := string(out)
	require.Contains(t, conf, "\npcre_jit on;\n")
	control := fmt.Sprintf("127.0.0.1:%d", testrig.FreePort(t))
	end := strings.LastIndex(conf, "}") // the http block's
	conf = conf[:end] + "    server {\n        listen " + control + ";\n        location ~ ^/(\\w+)+$ { return 200; }\n        location / { return 200; }\n    }\n" + conf[end:]
	ngx := testrig.NewNginx(t)
	ngx.WriteConfig(conf)
	ngx.Start()

	client := &http.Client{Timeout: 30 * time.Second}
	get := func(addr, path string, header map[string]string) (int, string) {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, "http://"+addr+path, nil)
		require.NoError(t, err)
		req.Host = "shop.test"
		for k, v := range header {
			req.Header.Set(k, v)
		}
		var resp *http.Response
		require.Eventually(t, func() bool { resp, err = client.Do(req); return err == nil }, 5*time.Second, 20*time.Millisecond)
		resp.Body.Close()
		return resp.StatusCode, resp.Header.Get("X-Rule")
	}
	attack := "/" + strings.Repeat("a", 24) + "!"
	long := "/" + strings.Repeat("a", 8000) + "!"

	code, _ := get(control, attack, nil)
	require.Equal(t, http.StatusInternalServerError, code, "the control: PCRE gives up on `^/(\\w+)+$`:\n%s", ngx.Log())

	for _, path := range []string{attack, long} {
		code, rule := get(o.HTTPListen, path, nil)
		require.Equal(t, http.StatusOK, code, "%.40s…", path)
		require.Empty(t, rule, "the regex does not match: the app's / answers")
		code, rule = get(o.HTTPListen, "/h", map[string]string{"X-A": path[1:]})
		require.Equal(t, http.StatusNotFound, code, "X-A: %.40s…: the header regex does not match, and no app routes /h without it", path[1:])
		require.Empty(t, rule)
	}
	code, rule := get(o.HTTPListen, "/"+strings.Repeat("a", 24), nil)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "regex", rule)
	code, rule = get(o.HTTPListen, "/h", map[string]string{"X-A": strings.Repeat("a", 24)})
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "header", rule)
}
