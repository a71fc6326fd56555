package acmecert

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/berthhq/berth/common/bus"
	"github.com/berthhq/berth/common/msg"
	"github.com/berthhq/berth/internal/testrig"
)

// issue makes a certificate for names, as msg.Certificate and its key.
func issue(t *testing.T, app string, serial int64, notAfter time.Time, names ...string) (*msg.Certificate, []byte) {
	t.Helper()
	chain, key, notBefore := testrig.Certificate(t, serial, notAfter, names...)
	return &msg.Certificate{App: app, Names: names, Chain: chain, Serial: fmt.Sprintf("%x", serial), NotBefore: notBefore, NotAfter: notAfter}, []byte(key)
}

func TestPlace(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "acme")
	end := time.Now().Add(90 * 24 * time.Hour)
	c1, k1 := issue(t, "web", 1, end, "web.example.com")
	f1, err := Place(dir, c1, k1, []string{"WEB.example.com"})
	require.NoError(t, err)
	st, err := os.Stat(f1.Key)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), st.Mode().Perm(), "the key is for lbagent's eyes only")
	again, err := Place(dir, c1, k1, []string{"web.example.com"})
	require.NoError(t, err)
	require.Equal(t, f1, again, "the same certificate, the same files")

	c2, k2 := issue(t, "web", 2, end.Add(time.Hour), "web.example.com")
	f2, err := Place(dir, c2, k2, []string{"web.example.com"})
	require.NoError(t, err)
	require.NotEqual(t, f1.Certificate, f2.Certificate, "a new certificate has files of its own: the config changes, nginx reloads")
	c3, k3 := issue(t, "web", 3, end.Add(2*time.Hour), "web.example.com")
	_, err = Place(dir, c3, k3, []string{"web.example.com"})
	require.NoError(t, err)
	_, err = os.Stat(f1.Certificate)
	require.ErrorIs(t, err, os.ErrNotExist, "only the one before is kept")
	_, err = os.Stat(f2.Key)
	require.NoError(t, err)

	_, err = Place(dir, c3, k1, []string{"web.example.com"})
	require.ErrorContains(t, err, "do not pair")
	_, err = Place(dir, c3, k3, []string{"shop.example.com"})
	require.ErrorContains(t, err, "covers none of its hosts shop.example.com")
	_, err = Place(dir, c3, k3, []string{"web.example.com", "www.example.com"})
	require.NoError(t, err, "hosts added: the old certificate serves the hosts it covers until the new one comes")
}

func TestResponderAnswersOnlyItsHost(t *testing.T) {
	t.Parallel()
	r := NewResponder()
	token := "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"
	ch := &msg.Challenge{App: "web", Host: "web.example.com", Token: token, KeyAuthorization: token + ".9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI", Term: 2, At: time.Now()}
	r.Handler().Snapshot([]bus.Event[*msg.Challenge]{{Key: token, Value: ch}}, 1)
	get := func(method, host, path string) (int, string) {
		req := httptest.NewRequest(method, "http://x"+path, nil)
		req.Host = host
		w := httptest.NewRecorder()
		r.ServeHTTP(w, req)
		return w.Code, w.Body.String()
	}
	code, body := get(http.MethodGet, "web.example.com:80", "/.well-known/acme-challenge/"+token)
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, ch.KeyAuthorization, body)
	code, _ = get(http.MethodGet, "shop.example.com", "/.well-known/acme-challenge/"+token)
	require.Equal(t, http.StatusNotFound, code, "another host's request learns nothing")
	code, _ = get(http.MethodPost, "web.example.com", "/.well-known/acme-challenge/"+token)
	require.Equal(t, http.StatusNotFound, code)
	code, _ = get(http.MethodGet, "web.example.com", "/.well-known/acme-challenge/other")
	require.Equal(t, http.StatusNotFound, code)
	// A deposed leader's older answer does not replace the current one.
	stale := *ch
	stale.Term, stale.KeyAuthorization = 1, token+".AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
	r.Handler().Update(bus.Event[*msg.Challenge]{Key: token, Revision: 2, Op: bus.OpPut, Value: &stale})
	_, body = get(http.MethodGet, "web.example.com", "/.well-known/acme-challenge/"+token)
	require.Equal(t, ch.KeyAuthorization, body)
	r.Handler().Update(bus.Event[*msg.Challenge]{Key: token, Revision: 3, Op: bus.OpDelete})
	code, _ = get(http.MethodGet, "web.example.com", "/.well-known/acme-challenge/"+token)
	require.Equal(t, http.StatusNotFound, code, "an order that is over answers nothing")
	answered, refused := r.Counts()
	require.Equal(t, uint64(2), answered)
	require.Equal(t, uint64(4), refused)
}

func TestListenKeepsItsPort(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "acme-port")
	ln, err := Listen("127.0.0.1:0", file)
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	again, err := Listen("127.0.0.1:0", file)
	require.NoError(t, err)
	defer again.Close()
	require.Equal(t, addr, again.Addr().String(), "a restart renders the same address")
	busy, err := Listen("127.0.0.1:0", file)
	require.NoError(t, err, "a taken port gives way to a new one")
	defer busy.Close()
	require.NotEqual(t, addr, busy.Addr().String())
}
