package api

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestHistoryGeneration: the history lists each generation's summary; one
// generation shows its spec as YAML and its diff against the kept one
// before, secrets redacted; an unknown or pruned generation is 404 naming
// what is kept, and a generation that is no number 400 naming the field.
func TestHistoryGeneration(t *testing.T) {
	t.Parallel()
	c, logs := secretAPI(t, true)
	c.st.SetHistoryKeep(3)
	specs := []string{
		withSecret,
		strings.Replace(withSecret, "web:1", "web:2", 1),
		strings.Replace(strings.Replace(withSecret, "web:1", "web:2", 1), secretValue, "other-"+secretValue, 1),
		strings.Replace(strings.Replace(withSecret, "web:1", "web:2", 1), secretValue, "other-"+secretValue, 1) + "replicas: 4\n",
	}
	var answers [][]byte
	for _, s := range specs {
		code, _, raw := c.do("PUT", "/v1/apps/web", s)
		require.Equal(t, 200, code, "%s", raw)
	}
	code, _, raw := c.do("GET", "/v1/apps/web/history", "")
	require.Equal(t, 200, code, "%s", raw)
	answers = append(answers, raw)
	require.Contains(t, string(raw), `"summary":"replicas 1→4"`)
	require.Contains(t, string(raw), `"summary":"env: ~DB_PASSWORD (secret)"`)
	require.Contains(t, string(raw), `"summary":"oldest kept generation (earlier ones pruned)"`)

	code, obj, raw := c.do("GET", "/v1/apps/web/history/3", "")
	require.Equal(t, 200, code, "%s", raw)
	answers = append(answers, raw)
	require.EqualValues(t, 3, obj["generation"])
	require.EqualValues(t, 2, obj["previous"])
	require.Equal(t, "env: ~DB_PASSWORD (secret)", obj["summary"])
	require.Contains(t, obj["yaml"], "image: web:2\n")
	require.Contains(t, obj["yaml"], "DB_PASSWORD:\n    secret: <redacted>\n")
	require.Contains(t, obj["diff"], "--- generation 2\n+++ generation 3\n")
	require.Contains(t, obj["diff"], "-    secret: <redacted>\n+    secret: <redacted> (changed)\n")

	code, obj, raw = c.do("GET", "/v1/apps/web/history/2", "")
	require.Equal(t, 200, code, "%s", raw)
	require.Nil(t, obj["previous"], "generation 1 was pruned")
	require.Empty(t, obj["diff"])

	for gen, want := range map[string]string{
		"1":  "generation 1 of web is not kept (it was pruned): 3 generations are kept, 2 to 4, and the scheduler keeps the newest 3 (--history-keep); scheduler history web lists them",
		"99": "generation 99 of web is not kept (the newest is 4)",
	} {
		code, obj, raw := c.do("GET", "/v1/apps/web/history/"+gen, "")
		require.Equal(t, http.StatusNotFound, code, "%s", raw)
		require.Contains(t, obj["error"], want)
	}
	for _, bad := range []string{"0", "-1", "two", "9999999999999999999999"} {
		code, obj, raw := c.do("GET", "/v1/apps/web/history/"+bad, "")
		require.Equal(t, http.StatusBadRequest, code, "%s", raw)
		require.Contains(t, fmt.Sprint(obj["fields"]), "generation")
		require.Contains(t, fmt.Sprint(obj["fields"]), "must be a generation of the app")
	}
	code, _, _ = c.do("GET", "/v1/apps/nosuch/history/1", "")
	require.Equal(t, http.StatusNotFound, code)

	// rollback --to a pruned generation: 409 naming what is kept.
	code, obj, raw = c.do("POST", "/v1/apps/web/rollback", `{"to": 1}`)
	require.Equal(t, http.StatusConflict, code, "%s", raw)
	require.Equal(t, "rollback web: generation 1 of web is not kept (it was pruned): 3 generations are kept, 2 to 4, "+
		"and the scheduler keeps the newest 3 (--history-keep); scheduler history web lists them", obj["error"])

	// A plan seals as apply does: the same secret changes nothing, another
	// shows as changed, never its value.
	code, obj, raw = c.do("POST", "/v1/apps/web/plan", specs[3])
	require.Equal(t, 200, code, "%s", raw)
	answers = append(answers, raw)
	require.Equal(t, false, obj["changed"])
	code, obj, raw = c.do("POST", "/v1/apps/web/plan", specs[1]+"replicas: 4\n")
	require.Equal(t, 200, code, "%s", raw)
	answers = append(answers, raw)
	require.Equal(t, "env: ~DB_PASSWORD (secret)", obj["summary"])
	require.Contains(t, obj["diff"], "+    secret: <redacted> (changed)\n")
	noSecretIn(t, logs, answers...)
}
