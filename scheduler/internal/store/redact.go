package store

import (
	"net/url"
	"regexp"
	"strings"
)

// redactedMark replaces a password.
const redactedMark = "REDACTED"

// secretKeys are the connection parameters whose values are redacted.
var secretKeys = map[string]bool{"password": true, "sslpassword": true}

// Redact returns a database URL or keyword/value DSN with its passwords
// replaced, for logs. It parses the DSN as libpq does: the password of a
// postgres:// URL and its password query parameter, and the password of
// the keyword/value form, quoted ('a b c', with \' and \\ escapes) or not.
// A DSN that does not parse is not echoed at all.
func Redact(dsn string) string {
	s := strings.TrimSpace(dsn)
	if strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://") {
		return redactURL(s)
	}
	out, ok := redactKeywords(s)
	if !ok {
		return "(unparseable DSN, " + redactedMark + ")"
	}
	return out
}

func redactURL(s string) string {
	scheme, _, _ := strings.Cut(s, "://")
	u, err := url.Parse(s)
	if err != nil {
		return scheme + "://(unparseable URL, " + redactedMark + ")"
	}
	if _, has := u.User.Password(); has {
		u.User = url.UserPassword(u.User.Username(), redactedMark)
	}
	if u.RawQuery != "" {
		q, err := url.ParseQuery(u.RawQuery)
		if err != nil {
			u.RawQuery = redactedMark
		} else {
			changed := false
			for k := range q {
				if secretKeys[strings.ToLower(k)] {
					q[k] = []string{redactedMark}
					changed = true
				}
			}
			if changed {
				u.RawQuery = q.Encode()
			}
		}
	}
	u.Fragment, u.RawFragment = "", ""
	return u.String()
}

// redactKeywords splices redactedMark over the value of every secret key
// of a keyword/value DSN ("host=db password='a b\'c'"), keeping the rest
// as written. ok is false when s does not parse.
func redactKeywords(s string) (string, bool) {
	var b strings.Builder
	i := 0
	skip := func() {
		for i < len(s) && isSpace(s[i]) {
			i++
		}
	}
	for {
		skip()
		if i == len(s) {
			return b.String(), true
		}
		start := i
		for i < len(s) && s[i] != '=' && !isSpace(s[i]) {
			i++
		}
		key := s[start:i]
		skip()
		if key == "" || i == len(s) || s[i] != '=' {
			return "", false
		}
		i++
		skip()
		valStart := i
		if i < len(s) && s[i] == '\'' {
			i++
			for ; i < len(s) && s[i] != '\''; i++ {
				if s[i] == '\\' {
					i++
				}
			}
			if i >= len(s) {
				return "", false // unterminated quote
			}
			i++
		} else {
			for ; i < len(s) && !isSpace(s[i]); i++ {
				if s[i] == '\\' {
					i++
				}
			}
			i = min(i, len(s))
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(key)
		b.WriteByte('=')
		if secretKeys[key] {
			b.WriteString(redactedMark)
		} else {
			b.WriteString(s[valStart:i])
		}
	}
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'
}

// secretInText matches a password in free text such as a driver's error:
// the user info of a postgres URL (to the last '@' of the word), and a
// password (or sslpassword) parameter, quoted with escapes or not.
var secretInText = regexp.MustCompile(`(?i)(postgres(?:ql)?://[^:/@\s]*:)\S*@|((?:ssl)?password\s*=\s*)(?:'(?:[^'\\]|\\.)*'?|[^\s&]+)`)

// scrub replaces passwords in s, an error message that may quote a DSN.
func scrub(s string) string {
	return secretInText.ReplaceAllStringFunc(s, func(m string) string {
		sub := secretInText.FindStringSubmatch(m)
		if sub[1] != "" {
			return sub[1] + redactedMark + "@"
		}
		return sub[2] + redactedMark
	})
}
