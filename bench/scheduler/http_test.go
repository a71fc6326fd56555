package scheduler

import (
	"net/http"
	"strings"
)

var httpClient = &http.Client{}

func httpRequest(method, url, body string) (*http.Request, error) {
	return http.NewRequest(method, url, strings.NewReader(body))
}
