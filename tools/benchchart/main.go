// Command benchchart draws the throughput chart of the benchmark harness
// (throughput vs connections, one line per server) as a PNG, with the
// standard library only: a built-in 5x7 pixel font writes the labels.
//
// Input (-in, default stdin): tab-separated lines "series<TAB>x<TAB>y".
// A series whose name ends in " delivered" is drawn dashed in the colour of
// the series it belongs to.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"math"
	"os"
	"sort"
	"strconv"
	"strings"
)

type point struct{ x, y float64 }

type series struct {
	name   string
	pts    []point
	dashed bool
	col    color.RGBA
}

var palette = map[string]color.RGBA{
	"postamt":   {0xd6, 0x27, 0x28, 0xff},
	"postfix":   {0x1f, 0x77, 0xb4, 0xff},
	"mailpit":   {0x2c, 0xa0, 0x2c, 0xff},
	"smtp-sink": {0x7f, 0x7f, 0x7f, 0xff},
}

var extra = []color.RGBA{{0x94, 0x67, 0xbd, 0xff}, {0x8c, 0x56, 0x4b, 0xff}, {0xe3, 0x77, 0xc2, 0xff}, {0xbc, 0xbd, 0x22, 0xff}}

func main() {
	in := flag.String("in", "-", "input TSV: series, x, y")
	out := flag.String("out", "throughput.png", "output PNG")
	title := flag.String("title", "SMTP THROUGHPUT (10 KB MESSAGES)", "chart title")
	xlabel := flag.String("xlabel", "CONNECTIONS", "x axis label")
	ylabel := flag.String("ylabel", "MSGS/S", "y axis label")
	w := flag.Int("w", 1000, "width")
	h := flag.Int("h", 620, "height")
	logy := flag.String("logy", "auto", "logarithmic y axis: yes, no, or auto (when the largest y is over 8x the smallest)")
	flag.Parse()
	var r io.Reader = os.Stdin
	if *in != "-" {
		f, err := os.Open(*in)
		if err != nil {
			fatal(err)
		}
		defer f.Close()
		r = f
	}
	ss, err := parse(r)
	if err != nil {
		fatal(err)
	}
	if len(ss) == 0 {
		fatal(fmt.Errorf("no data"))
	}
	useLog := *logy == "yes"
	if *logy == "auto" {
		lo, hi := math.Inf(1), 0.0
		for _, s := range ss {
			for _, p := range s.pts {
				if p.y > 0 {
					lo, hi = math.Min(lo, p.y), math.Max(hi, p.y)
				}
			}
		}
		useLog = hi > 8*lo
	}
	if useLog {
		*ylabel += " (LOG SCALE)"
	}
	img := draw(ss, *w, *h, *title, *xlabel, *ylabel, useLog)
	f, err := os.Create(*out)
	if err != nil {
		fatal(err)
	}
	if err := png.Encode(f, img); err != nil {
		fatal(err)
	}
	if err := f.Close(); err != nil {
		fatal(err)
	}
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "benchchart:", err)
	os.Exit(1)
}

func parse(r io.Reader) ([]*series, error) {
	byName := map[string]*series{}
	var order []string
	sc := bufio.NewScanner(r)
	for ln := 1; sc.Scan() && ln < 100000; ln++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Split(line, "\t")
		if len(f) != 3 {
			return nil, fmt.Errorf("line %d: want 3 tab-separated fields", ln)
		}
		x, err1 := strconv.ParseFloat(f[1], 64)
		y, err2 := strconv.ParseFloat(f[2], 64)
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("line %d: bad number", ln)
		}
		s := byName[f[0]]
		if s == nil {
			s = &series{name: f[0], dashed: strings.HasSuffix(strings.ToLower(f[0]), " delivered")}
			byName[f[0]] = s
			order = append(order, f[0])
		}
		s.pts = append(s.pts, point{x, y})
	}
	var out []*series
	next := 0
	for _, n := range order {
		s := byName[n]
		sort.Slice(s.pts, func(i, j int) bool { return s.pts[i].x < s.pts[j].x })
		base := strings.ToLower(strings.TrimSuffix(strings.TrimSuffix(n, " delivered"), " DELIVERED"))
		if c, ok := palette[base]; ok {
			s.col = c
		} else {
			s.col = extra[next%len(extra)]
			next++
		}
		out = append(out, s)
	}
	return out, sc.Err()
}

// ------------------------------------------------------------ drawing

type canvas struct{ *image.RGBA }

func (c canvas) dot(x, y, r int, col color.RGBA) {
	for dy := -r; dy <= r; dy++ {
		for dx := -r; dx <= r; dx++ {
			c.SetRGBA(x+dx, y+dy, col)
		}
	}
}

func (c canvas) rect(x0, y0, x1, y1 int, col color.RGBA) {
	for y := y0; y <= y1; y++ {
		for x := x0; x <= x1; x++ {
			c.SetRGBA(x, y, col)
		}
	}
}

// line draws a thick line; dash > 0 draws dash pixels on, dash off.
func (c canvas) line(x0, y0, x1, y1, r, dash int, col color.RGBA) {
	dx, dy := abs(x1-x0), -abs(y1-y0)
	sx, sy := sign(x1-x0), sign(y1-y0)
	err := dx + dy
	for i := 0; i < 100000; i++ {
		if dash <= 0 || (i/dash)%2 == 0 {
			c.dot(x0, y0, r, col)
		}
		if x0 == x1 && y0 == y1 {
			return
		}
		e2 := 2 * err
		if e2 >= dy {
			err += dy
			x0 += sx
		}
		if e2 <= dx {
			err += dx
			y0 += sy
		}
	}
}

func abs(a int) int {
	if a < 0 {
		return -a
	}
	return a
}

func sign(a int) int {
	switch {
	case a < 0:
		return -1
	case a > 0:
		return 1
	}
	return 0
}

// text writes s with the built-in font at scale k; returns the width drawn.
func (c canvas) text(x, y int, s string, k int, col color.RGBA) int {
	x0 := x
	for _, ch := range strings.ToUpper(s) {
		g, ok := font[ch]
		if !ok {
			g = font['?']
		}
		for row, bits := range g {
			for colI := 0; colI < 5; colI++ {
				if bits[colI] == '#' {
					c.rect(x+colI*k, y+row*k, x+colI*k+k-1, y+row*k+k-1, col)
				}
			}
		}
		x += 6 * k
	}
	return x - x0
}

func textWidth(s string, k int) int { return len([]rune(s)) * 6 * k }

// vtext writes s bottom-to-top (rotated 90 degrees counter-clockwise).
func (c canvas) vtext(x, y int, s string, k int, col color.RGBA) {
	for _, ch := range strings.ToUpper(s) {
		g, ok := font[ch]
		if !ok {
			g = font['?']
		}
		for row, bits := range g {
			for colI := 0; colI < 5; colI++ {
				if bits[colI] == '#' {
					px, py := x+row*k, y-colI*k
					c.rect(px, py-k+1, px+k-1, py, col)
				}
			}
		}
		y -= 6 * k
	}
}

func niceStep(max float64, ticks int) float64 {
	if max <= 0 {
		return 1
	}
	raw := max / float64(ticks)
	p := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*p >= raw {
			return m * p
		}
	}
	return 10 * p
}

func fmtNum(v float64) string {
	if v >= 10 || v == 0 {
		return strconv.FormatFloat(math.Round(v), 'f', -1, 64)
	}
	return strconv.FormatFloat(v, 'f', 1, 64)
}

func draw(ss []*series, W, H int, title, xlabel, ylabel string, logy bool) *image.RGBA {
	img := image.NewRGBA(image.Rect(0, 0, W, H))
	c := canvas{img}
	white := color.RGBA{0xff, 0xff, 0xff, 0xff}
	black := color.RGBA{0x20, 0x20, 0x20, 0xff}
	grid := color.RGBA{0xe4, 0xe4, 0xe4, 0xff}
	c.rect(0, 0, W-1, H-1, white)

	left, right, top, bottom := 110, 290, 60, 80
	pw, ph := W-left-right, H-top-bottom
	var maxX, maxY float64
	minY := math.Inf(1)
	xs := map[float64]bool{}
	for _, s := range ss {
		for _, p := range s.pts {
			maxX = math.Max(maxX, p.x)
			maxY = math.Max(maxY, p.y)
			if p.y > 0 {
				minY = math.Min(minY, p.y)
			}
			xs[p.x] = true
		}
	}
	ystep := niceStep(maxY*1.08, 6)
	ymax := math.Ceil(maxY*1.08/ystep) * ystep
	if ymax <= 0 {
		ymax = 1
	}
	xmax := maxX * 1.1
	if xmax <= 0 {
		xmax = 1
	}
	px := func(x float64) int { return left + int(math.Round(x/xmax*float64(pw))) }
	py := func(y float64) int { return top + ph - int(math.Round(y/ymax*float64(ph))) }

	var yticks []float64
	if logy {
		lo := math.Pow(10, math.Floor(math.Log10(minY)))
		hi := math.Pow(10, math.Ceil(math.Log10(maxY*1.05)))
		llo, lhi := math.Log10(lo), math.Log10(hi)
		py = func(y float64) int {
			if y <= lo {
				return top + ph
			}
			return top + ph - int(math.Round((math.Log10(y)-llo)/(lhi-llo)*float64(ph)))
		}
		for d := lo; d <= hi*1.001 && len(yticks) < 100; d *= 10 {
			for _, m := range []float64{1, 2, 5} {
				if d*m <= hi*1.001 {
					yticks = append(yticks, d*m)
				}
			}
		}
	} else {
		for y := 0.0; y <= ymax+ystep/2 && len(yticks) < 100; y += ystep {
			yticks = append(yticks, y)
		}
	}

	// title and grid
	c.text((W-textWidth(title, 3))/2, 16, title, 3, black)
	for _, y := range yticks {
		yy := py(y)
		c.line(left, yy, left+pw, yy, 0, 0, grid)
		lbl := fmtNum(y)
		c.text(left-12-textWidth(lbl, 2), yy-7, lbl, 2, black)
	}
	var xv []float64
	for x := range xs {
		xv = append(xv, x)
	}
	sort.Float64s(xv)
	for _, x := range xv {
		xx := px(x)
		c.line(xx, top, xx, top+ph, 0, 0, grid)
		lbl := fmtNum(x)
		c.text(xx-textWidth(lbl, 2)/2, top+ph+12, lbl, 2, black)
	}
	c.line(left, top, left, top+ph, 1, 0, black)
	c.line(left, top+ph, left+pw, top+ph, 1, 0, black)
	c.text(left+(pw-textWidth(xlabel, 2))/2, top+ph+40, xlabel, 2, black)
	c.vtext(24, top+(ph+textWidth(ylabel, 2))/2, ylabel, 2, black)

	// lines
	for _, s := range ss {
		dash := 0
		if s.dashed {
			dash = 9
		}
		for i := 1; i < len(s.pts); i++ {
			c.line(px(s.pts[i-1].x), py(s.pts[i-1].y), px(s.pts[i].x), py(s.pts[i].y), 1, dash, s.col)
		}
		for _, p := range s.pts {
			c.dot(px(p.x), py(p.y), 4, s.col)
		}
	}
	// value labels, moved down or up until they do not overlap one another
	var placed []image.Rectangle
	for _, s := range ss {
		for _, p := range s.pts {
			lbl := fmtNum(p.y)
			x, y := px(p.x)+8, py(p.y)-16
			r := image.Rect(x, y, x+textWidth(lbl, 1), y+9)
			for try := 0; try < 12; try++ {
				d := (try + 1) / 2 * 10
				if try%2 == 1 {
					d = -d
				}
				cand := r.Add(image.Pt(0, d))
				ok := true
				for _, q := range placed {
					if cand.Overlaps(q) {
						ok = false
						break
					}
				}
				if ok {
					r = cand
					break
				}
			}
			placed = append(placed, r)
			c.rect(r.Min.X-1, r.Min.Y-1, r.Max.X, r.Max.Y-1, white)
			c.text(r.Min.X, r.Min.Y, lbl, 1, s.col)
		}
	}

	// legend
	lx, ly := left+pw+24, top+10
	c.text(lx, ly, "SERVER", 2, black)
	ly += 28
	for _, s := range ss {
		dash := 0
		if s.dashed {
			dash = 6
		}
		c.line(lx, ly+6, lx+36, ly+6, 1, dash, s.col)
		c.dot(lx+18, ly+6, 3, s.col)
		c.text(lx+46, ly, s.name, 2, black)
		ly += 26
	}
	return img
}

// font is a 5x7 pixel font: 7 rows of 5 columns, '#' is ink.
var font = map[rune][7]string{
	' ': {".....", ".....", ".....", ".....", ".....", ".....", "....."},
	'A': {".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"},
	'B': {"####.", "#...#", "#...#", "####.", "#...#", "#...#", "####."},
	'C': {".###.", "#...#", "#....", "#....", "#....", "#...#", ".###."},
	'D': {"####.", "#...#", "#...#", "#...#", "#...#", "#...#", "####."},
	'E': {"#####", "#....", "#....", "####.", "#....", "#....", "#####"},
	'F': {"#####", "#....", "#....", "####.", "#....", "#....", "#...."},
	'G': {".###.", "#...#", "#....", "#.###", "#...#", "#...#", ".####"},
	'H': {"#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"},
	'I': {".###.", "..#..", "..#..", "..#..", "..#..", "..#..", ".###."},
	'J': {"..###", "...#.", "...#.", "...#.", "...#.", "#..#.", ".##.."},
	'K': {"#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#"},
	'L': {"#....", "#....", "#....", "#....", "#....", "#....", "#####"},
	'M': {"#...#", "##.##", "#.#.#", "#.#.#", "#...#", "#...#", "#...#"},
	'N': {"#...#", "#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#"},
	'O': {".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."},
	'P': {"####.", "#...#", "#...#", "####.", "#....", "#....", "#...."},
	'Q': {".###.", "#...#", "#...#", "#...#", "#.#.#", "#..#.", ".##.#"},
	'R': {"####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"},
	'S': {".####", "#....", "#....", ".###.", "....#", "....#", "####."},
	'T': {"#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."},
	'U': {"#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."},
	'V': {"#...#", "#...#", "#...#", "#...#", "#...#", ".#.#.", "..#.."},
	'W': {"#...#", "#...#", "#...#", "#.#.#", "#.#.#", "#.#.#", ".#.#."},
	'X': {"#...#", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "#...#"},
	'Y': {"#...#", "#...#", ".#.#.", "..#..", "..#..", "..#..", "..#.."},
	'Z': {"#####", "....#", "...#.", "..#..", ".#...", "#....", "#####"},
	'0': {".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."},
	'1': {"..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."},
	'2': {".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"},
	'3': {"#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."},
	'4': {"...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."},
	'5': {"#####", "#....", "####.", "....#", "....#", "#...#", ".###."},
	'6': {"..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."},
	'7': {"#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."},
	'8': {".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."},
	'9': {".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."},
	'/': {"....#", "....#", "...#.", "..#..", ".#...", "#....", "#...."},
	'-': {".....", ".....", ".....", "#####", ".....", ".....", "....."},
	'+': {".....", "..#..", "..#..", "#####", "..#..", "..#..", "....."},
	'.': {".....", ".....", ".....", ".....", ".....", ".##..", ".##.."},
	',': {".....", ".....", ".....", ".....", ".##..", "..#..", ".#..."},
	':': {".....", ".##..", ".##..", ".....", ".##..", ".##..", "....."},
	'(': {"...#.", "..#..", ".#...", ".#...", ".#...", "..#..", "...#."},
	')': {".#...", "..#..", "...#.", "...#.", "...#.", "..#..", ".#..."},
	'=': {".....", ".....", "#####", ".....", "#####", ".....", "....."},
	'%': {"##...", "##..#", "...#.", "..#..", ".#...", "#..##", "...##"},
	'_': {".....", ".....", ".....", ".....", ".....", ".....", "#####"},
	'?': {".###.", "#...#", "....#", "...#.", "..#..", ".....", "..#.."},
}
