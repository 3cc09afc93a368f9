import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";

const gateway = process.env.PARLEY_URL ?? "http://127.0.0.1:3000";

export default defineConfig({
  plugins: [react()],
  // @parley/client is linked from ../clients/js, which has its own (dev) copy of React: use ours.
  resolve: { dedupe: ["react", "react-dom"] },
  server: {
    proxy: {
      "/api": { target: gateway, changeOrigin: false },
      "/socket.io": { target: gateway, ws: true, changeOrigin: false },
    },
  },
  build: { outDir: "dist", sourcemap: true },
});
