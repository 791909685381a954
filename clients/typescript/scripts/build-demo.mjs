// Bundles the demo page (demo/demo.tsx + the built client from dist/) into dist/demo/.
import { build } from 'esbuild';
import { copyFileSync, existsSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const out = join(root, 'dist', 'demo');
const entries = { '@switchboard/client': 'index.js', '@switchboard/client/react': 'react.js', '@switchboard/client/zustand': 'zustand.js' };

// The demo imports the package by name; this resolves it to the build in dist/ (what npm users get).
const builtClient = {
  name: 'built-client',
  setup(b) {
    b.onResolve({ filter: /^@switchboard\/client(\/.*)?$/ }, (args) => {
      const file = entries[args.path];
      if (file === undefined) return { errors: [{ text: `unknown entry ${args.path}` }] };
      const path = join(root, 'dist', file);
      if (!existsSync(path)) return { errors: [{ text: `${path} is missing: run tsc first (npm run build)` }] };
      return { path };
    });
  },
};

mkdirSync(out, { recursive: true });
await build({
  entryPoints: [join(root, 'demo', 'demo.tsx')],
  outfile: join(out, 'demo.js'),
  bundle: true,
  format: 'esm',
  platform: 'browser',
  target: ['es2022'],
  jsx: 'automatic',
  minify: process.env.DEMO_MINIFY !== "0",
  sourcemap: true,
  define: { 'process.env.NODE_ENV': '"production"' },
  plugins: [builtClient],
  logLevel: 'warning',
});
for (const f of ['index.html', 'demo.css']) copyFileSync(join(root, 'demo', f), join(out, f));
console.log(`demo built in ${out}`);
