// Command mkimage writes container images, made of layer tarballs and a config, into one image
// tarball (the format `docker save` writes and `ctr images import` reads) with
// go-containerregistry. Layers are stored gzipped; images that share a layer share it in the
// tarball too.
//
//	mkimage -o images.tar -layer root.tar [-layer ...] [-user 65532:65532] \
//	    -image 'registry.k8s.io/etcd:3.6.4-0=etcd' [-image 'ref=entry,point' ...]
//
// Each -image is a reference and the image's entrypoint (comma-separated words).
package main

import (
	"compress/gzip"
	"flag"
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

type list []string

func (l *list) String() string     { return strings.Join(*l, " ") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	var layers, images, env list
	out := flag.String("o", "", "output tarball")
	user := flag.String("user", "", "user (uid[:gid]) the images run as")
	flag.Var(&layers, "layer", "an uncompressed layer tarball, bottom first (repeatable)")
	flag.Var(&images, "image", "reference=entrypoint,words (repeatable)")
	flag.Var(&env, "env", "KEY=value set in every image (repeatable)")
	flag.Parse()
	if *out == "" || len(layers) == 0 || len(images) == 0 || flag.NArg() > 0 {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(*out, *user, layers, images, env); err != nil {
		fmt.Fprintf(os.Stderr, "mkimage: %v\n", err)
		os.Exit(1)
	}
}

func run(out, user string, layerFiles, images, env []string) error {
	base := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	var adds []mutate.Addendum
	for _, f := range layerFiles {
		layer, err := tarball.LayerFromFile(f, tarball.WithMediaType(types.OCILayer),
			tarball.WithCompressionLevel(gzip.BestSpeed))
		if err != nil {
			return fmt.Errorf("layer %s: %w", f, err)
		}
		adds = append(adds, mutate.Addendum{Layer: layer, MediaType: types.OCILayer})
	}
	withLayers, err := mutate.Append(base, adds...)
	if err != nil {
		return err
	}
	refs := map[name.Reference]v1.Image{}
	for _, spec := range images {
		ref, entry, ok := strings.Cut(spec, "=")
		if !ok || entry == "" {
			return fmt.Errorf("-image %q: want reference=entrypoint", spec)
		}
		tag, err := name.NewTag(ref)
		if err != nil {
			return err
		}
		cf, err := withLayers.ConfigFile()
		if err != nil {
			return err
		}
		cf = cf.DeepCopy()
		cf.OS = "linux"
		cf.Architecture = runtime.GOARCH
		cf.Created = v1.Time{Time: time.Unix(0, 0).UTC()}
		cf.Config.Entrypoint = strings.Split(entry, ",")
		cf.Config.User = user
		cf.Config.Env = append([]string{"PATH=/usr/local/bin:/usr/bin:/bin"}, env...)
		img, err := mutate.ConfigFile(withLayers, cf)
		if err != nil {
			return err
		}
		refs[tag] = img
	}
	return tarball.MultiRefWriteToFile(out, refs)
}
