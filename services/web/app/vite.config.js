import { defineConfig } from 'vite';

// Plain modules, no framework. The Rust `web` server serves dist/ and /config.json; in
// `npm run dev` the config comes from public/config.json (see README).
export default defineConfig({
  build: { outDir: 'dist', emptyOutDir: true, sourcemap: true, target: 'es2022' },
  server: { port: 5173, strictPort: true },
});
