package store

import "regexp"

// passwordRe matches the password of a postgres URL or a key=value DSN.
var passwordRe = regexp.MustCompile(`(postgres(?:ql)?://[^:/@\s]+:)[^@\s]+@|(password=)\S+`)

// scrub replaces passwords in s with "REDACTED".
func scrub(s string) string {
	return passwordRe.ReplaceAllStringFunc(s, func(m string) string {
		if sub := passwordRe.FindStringSubmatch(m); sub[1] != "" {
			return sub[1] + "REDACTED@"
		}
		return "password=REDACTED"
	})
}

// Redact returns a database URL or DSN with its password replaced, for logs.
func Redact(url string) string { return scrub(url) }
