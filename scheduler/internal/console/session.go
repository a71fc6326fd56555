package console

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"sync"
	"time"

	"github.com/berthhq/berth/common/msg"
)

// maxSessions caps the sessions a replica keeps: past it, signing in
// drops the one nearest its expiry.
const maxSessions = 10000

// session is one signed-in browser. The token's secret stays in this
// replica's memory, never in the cookie: each request checks it again
// with the keyring, so that a revoked token ends its sessions.
type session struct {
	secret  string
	csrf    string
	expires time.Time
	// flash is a one-off notice for the next page this session renders
	// (what an action did), at most maxFlash bytes.
	flash string
}

// maxFlash caps a session's flash: it holds an API message and an event's,
// both bounded, but a session must not grow with what it is told.
const maxFlash = 2048

// sessions maps opaque random ids (the cookie's value) to sessions. It
// is safe for concurrent use.
type sessions struct {
	mu sync.Mutex
	m  map[string]session
}

func newSessions() *sessions { return &sessions{m: map[string]session{}} }

// add starts a session of secret until expires, and returns its id.
func (s *sessions) add(secret string, now, expires time.Time) (string, session, error) {
	id, err := random()
	if err != nil {
		return "", session{}, err
	}
	csrf, err := random()
	if err != nil {
		return "", session{}, err
	}
	ss := session{secret: secret, csrf: csrf, expires: expires}
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, v := range s.m {
		if !v.expires.After(now) {
			delete(s.m, k)
		}
	}
	if len(s.m) >= maxSessions {
		oldest := ""
		for k, v := range s.m {
			if oldest == "" || v.expires.Before(s.m[oldest].expires) {
				oldest = k
			}
		}
		delete(s.m, oldest)
	}
	s.m[id] = ss
	return id, ss, nil
}

// get returns the session of id while it has not expired at now.
func (s *sessions) get(id string, now time.Time) (session, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ss, ok := s.m[id]
	if !ok {
		return session{}, false
	}
	if !ss.expires.After(now) {
		delete(s.m, id)
		return session{}, false
	}
	return ss, true
}

// setFlash sets the notice the session's next page shows, cut to
// maxFlash bytes; a session that ended meanwhile gets none.
func (s *sessions) setFlash(id, text string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ss, ok := s.m[id]; ok {
		ss.flash = msg.Truncate(text, maxFlash)
		s.m[id] = ss
	}
}

// takeFlash returns the session's notice and forgets it: it shows once.
func (s *sessions) takeFlash(id string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	ss, ok := s.m[id]
	if !ok || ss.flash == "" {
		return ""
	}
	text := ss.flash
	ss.flash = ""
	s.m[id] = ss
	return text
}

// count is how many sessions there are, expired ones not yet dropped
// included.
func (s *sessions) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}

// drop ends the session of id.
func (s *sessions) drop(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, id)
}

// random returns 32 random bytes, base64url without padding.
func random() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// sameSecret compares a CSRF token from a form with the expected one in
// constant time; an empty expected value matches nothing.
func sameSecret(got, want string) bool {
	return want != "" && subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}
