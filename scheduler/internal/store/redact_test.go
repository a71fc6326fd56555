package store

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestRedactDSN(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, in, want string }{
		{"url", "postgres://berth:s3cret@db:5432/berth?sslmode=disable", "postgres://berth:REDACTED@db:5432/berth?sslmode=disable"},
		{"postgresql scheme", "postgresql://berth:s3cret@db/berth", "postgresql://berth:REDACTED@db/berth"},
		{"url without password", "postgres://berth@db/x", "postgres://berth@db/x"},
		{"url escaped password", "postgres://berth:p%40ss%20zz9@db/x", "postgres://berth:REDACTED@db/x"},
		{"url query password", "postgres://berth@db/x?sslmode=disable&password=s3cret", "postgres://berth@db/x?password=REDACTED&sslmode=disable"},
		{"url both", "postgres://berth:s3cret@db/x?password=s3cret&sslpassword=s3cret", "postgres://berth:REDACTED@db/x?password=REDACTED&sslpassword=REDACTED"},
		{"url unparseable", "postgres://berth:s3cret@db:port/x", "postgres://(unparseable URL, REDACTED)"},
		{"keywords", "host=db user=berth password=s3cret dbname=x", "host=db user=berth password=REDACTED dbname=x"},
		{"keywords spaced", "host = db password = s3cret  dbname=x", "host=db password=REDACTED dbname=x"},
		{"keywords quoted", "host=db password='a s3cret c' dbname=x", "host=db password=REDACTED dbname=x"},
		{"keywords escaped quote", `host=db password='it\'s s3cret' dbname=x`, "host=db password=REDACTED dbname=x"},
		{"keywords escaped backslash", `password='s3cret\\' dbname=x`, "password=REDACTED dbname=x"},
		{"keywords unquoted escape", `password=s3\ cret dbname=x`, "password=REDACTED dbname=x"},
		{"keywords quoted other", "host=db application_name='my app'", "host=db application_name='my app'"},
		{"keywords sslpassword", "host=db sslpassword=s3cret", "host=db sslpassword=REDACTED"},
		{"keywords unterminated quote", "host=db password='s3cret", "(unparseable DSN, REDACTED)"},
		{"keywords missing equals", "host=db s3cret", "(unparseable DSN, REDACTED)"},
		{"empty", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := Redact(tc.in)
			require.Equal(t, tc.want, got)
			require.NotContains(t, got, "s3cret")
			require.NotContains(t, got, "zz9")
		})
	}
}

func TestScrubErrorText(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, in, want string }{
		{"url", `failed to connect to "postgres://berth:s3cret@db/x": refused`, `failed to connect to "postgres://berth:REDACTED@db/x": refused`},
		{"url with @ in password", "cannot parse postgres://berth:s3c@ret@db/x", "cannot parse postgres://berth:REDACTED@db/x"},
		{"keywords", "cannot parse `host=db password=s3cret`: x", "cannot parse `host=db password=REDACTED x"}, // over-redacts to the next space,
		{"quoted", "dsn host=db password='a s3cret c' dbname=x", "dsn host=db password=REDACTED dbname=x"},
		{"escaped quote", `dsn password='it\'s s3cret' dbname=x`, "dsn password=REDACTED dbname=x"},
		{"unterminated", "dsn password='s3cret and more", "dsn password=REDACTED"},
		{"query", "postgres://berth@db/x?password=s3cret&sslmode=disable", "postgres://berth@db/x?password=REDACTED&sslmode=disable"},
		{"none", "connection refused", "connection refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := scrub(tc.in)
			require.Equal(t, tc.want, got)
			require.NotContains(t, got, "s3cret")
		})
	}
}
