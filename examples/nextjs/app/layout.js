import Providers from "./providers";

export const metadata = { title: "gatehouse beside Next.js" };

export default function RootLayout({ children }) {
  return (
    <html lang="en">
      <body style={{ fontFamily: "system-ui, sans-serif", maxWidth: "48rem", margin: "2rem auto", padding: "0 1rem" }}>
        <Providers>{children}</Providers>
      </body>
    </html>
  );
}
