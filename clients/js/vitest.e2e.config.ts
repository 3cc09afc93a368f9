// The hook against a real gateway; run by services/tests/e2e/jsclient.rs, which starts the
// roles and passes their address and tokens in the environment.
import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    environment: "jsdom",
    include: ["test/**/*.e2e.tsx"],
    testTimeout: 30_000,
  },
});
