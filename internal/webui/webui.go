// Package webui is the sandbox's web interface: hand-written HTML, CSS and JavaScript embedded
// in the binary (no build step, no Node.js at run time, nothing from a CDN). It talks only to
// the REST API and event stream of internal/httpapi.
package webui

import (
	"embed"
	"io/fs"
	"net/http"
)

//go:embed static
var files embed.FS

// Handler serves the UI. Every path that is not a file gets index.html, so that links to a
// message (/#/m/ID) survive a reload.
func Handler() http.Handler {
	sub, _ := fs.Sub(files, "static")
	fsrv := http.FileServer(http.FS(sub))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The UI itself runs scripts (our own, same origin only); mail content is never put
		// into this document, only into the sandboxed preview frame.
		w.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; frame-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
		w.Header().Set("X-Frame-Options", "DENY")
		if r.URL.Path != "/" {
			if _, err := fs.Stat(sub, r.URL.Path[1:]); err != nil {
				r.URL.Path = "/"
			}
		}
		fsrv.ServeHTTP(w, r)
	})
}
